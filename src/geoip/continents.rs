//! Countries to continents, as the Go server maps them (its table comes
//! from the public-domain `datasets/country-codes` list; one continent per
//! country). Pure data: imports nothing of the crate.

/// The continent codes the Go server knows.
pub const CONTINENTS: [&str; 7] = ["AF", "AN", "AS", "EU", "NA", "OC", "SA"];

/// Country codes (ISO 3166-1 alpha-2) per continent.
const BY_CONTINENT: [(&str, &str); 7] = [
    (
        "AF",
        "AO BF BI BJ BW CD CF CG CI CM CV DJ DZ EG EH ER ET GA GH GM GN GQ GW KE KM LR LS LY MA MG \
         ML MR MU MW MZ NA NE NG RE RW SC SD SH SL SN SO SS ST SZ TD TG TN TZ UG YT ZA ZM ZW",
    ),
    ("AN", "AQ BV GS HM TF"),
    (
        "AS",
        "AE AF AM AZ BD BH BN BT CC CN GE HK ID IL IN IO IQ IR JO JP KG KH KP KR KW KZ LA LB LK MM \
         MN MO MV MY NP OM PH PK PS QA SA SG SY TH TJ TM TR TW UZ VN YE",
    ),
    (
        "EU",
        "AD AL AT AX BA BE BG BY CH CY CZ DE DK EE ES FI FO FR GB GG GI GR HR HU IE IM IS IT JE LI \
         LT LU LV MC MD ME MK MT NL NO PL PT RO RS RU SE SI SJ SK SM UA VA",
    ),
    (
        "NA",
        "AG AI AW BB BL BM BQ BS BZ CA CR CU CW DM DO GD GL GP GT HN HT JM KN KY LC MF MQ MS MX NI \
         PA PM PR SV SX TC TT US VC VG VI",
    ),
    (
        "OC",
        "AS AU CK CX FJ FM GU KI MH MP NC NF NR NU NZ PF PG PN PW SB TK TL TO TV UM VU WF WS",
    ),
    ("SA", "AR BO BR CL CO EC FK GF GY PE PY SR UY VE"),
];

/// The continent of an upper-case country code; None for codes the table
/// does not have (e.g. `XK`).
pub fn of(country: &str) -> Option<&'static str> {
    if country.len() != 2 {
        return None;
    }
    BY_CONTINENT
        .iter()
        .find(|(_, list)| list.split_ascii_whitespace().any(|c| c == country))
        .map(|(continent, _)| *continent)
}

/// True for a continent code the Go server knows (upper case).
pub fn is_continent(code: &str) -> bool {
    CONTINENTS.contains(&code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn countries_map_to_their_continent() {
        assert_eq!(of("DE"), Some("EU"));
        assert_eq!(of("US"), Some("NA"));
        assert_eq!(of("BR"), Some("SA"));
        assert_eq!(of("NA"), Some("AF")); // Namibia, not North America
        assert_eq!(of("AS"), Some("OC")); // American Samoa, not Asia
        assert_eq!(of("AQ"), Some("AN"));
        assert_eq!(of("JP"), Some("AS"));
        assert_eq!(of("XK"), None);
        assert_eq!(of("de"), None);
        assert_eq!(of("D"), None);
        assert_eq!(of(""), None);
    }

    #[test]
    fn the_table_has_each_country_once() {
        let mut all: Vec<&str> = BY_CONTINENT
            .iter()
            .flat_map(|(_, l)| l.split_ascii_whitespace())
            .collect();
        assert_eq!(all.len(), 249);
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 249);
        assert!(all.iter().all(|c| c.len() == 2));
        assert!(BY_CONTINENT.iter().all(|(c, _)| is_continent(c)));
        assert!(!is_continent("eu") && !is_continent("XX"));
    }
}
