//! Which proxy gets a new publisher (mcu-proxy-notes.md §3): the least
//! loaded first, ties in `[mcu] url` order; with the publishing client's
//! country known, proxies of that country first, then of its continent,
//! then the rest. Proxies that are not connected, scheduled their
//! shutdown or lost their Janus get none.

use super::conn::ConnState;

/// The proxies to try for a new publisher, best first (indexes into
/// `states`, which is in `[mcu] url` order).
pub fn order(
    states: &[ConnState],
    country: Option<&str>,
    continents: &dyn Fn(&str) -> Vec<String>,
) -> Vec<usize> {
    let mut usable: Vec<usize> = (0..states.len())
        .filter(|&i| {
            let s = &states[i];
            s.connected && !s.shutdown && !s.backend_down
        })
        .collect();
    // Stable: ties keep the configured order.
    usable.sort_by_key(|&i| states[i].load);
    let Some(country) = country.filter(|c| !c.is_empty()) else {
        return usable;
    };
    let mine = continents(country);
    let rank = |i: &usize| {
        let c = &states[*i].country;
        if c.is_empty() {
            2
        } else if c == country {
            0
        } else if continents(c).iter().any(|x| mine.contains(x)) {
            1
        } else {
            2
        }
    };
    usable.sort_by_key(rank);
    usable
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(load: u64, country: &str) -> ConnState {
        ConnState {
            connected: true,
            load,
            country: country.into(),
            ..Default::default()
        }
    }

    fn none(_: &str) -> Vec<String> {
        Vec::new()
    }

    #[test]
    fn least_loaded_first_and_ties_keep_the_configured_order() {
        let s = [st(3, ""), st(1, ""), st(1, ""), st(0, "")];
        assert_eq!(order(&s, None, &none), vec![3, 1, 2, 0]);
        let s = [st(0, ""), st(0, "")];
        assert_eq!(order(&s, None, &none), vec![0, 1]);
    }

    #[test]
    fn unusable_proxies_get_no_publisher() {
        let mut s = [st(5, ""), st(0, ""), st(0, ""), st(0, "")];
        s[1].shutdown = true;
        s[2].backend_down = true;
        s[3].connected = false;
        assert_eq!(order(&s, None, &none), vec![0]);
    }

    #[test]
    fn country_then_continent_then_the_rest() {
        let continents = |c: &str| match c {
            "DE" | "FR" => vec!["EU".to_string()],
            "US" => vec!["NA".to_string()],
            _ => vec![],
        };
        let s = [st(0, "US"), st(2, "FR"), st(5, "DE"), st(1, "")];
        assert_eq!(order(&s, Some("DE"), &continents), vec![2, 1, 0, 3]);
        assert_eq!(order(&s, None, &continents), vec![0, 3, 1, 2]);
        assert_eq!(order(&s, Some("JP"), &continents), vec![0, 3, 1, 2]);
    }
}
