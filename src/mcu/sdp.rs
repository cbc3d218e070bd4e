//! What the server needs to know of SDPs and ICE candidates: which media an
//! offer publishes, whether a candidate parses, and which candidates the
//! `[mcu]` allow/block lists (and the mDNS rule) remove.
//!
//! Read as Janus reads it, so that what is checked here is what Janus acts
//! on: fields are separated by any whitespace (`m=video<TAB>9`), and media
//! types and attribute names are compared without regard to case
//! (`m=VIDEO` is video and needs `publish-video`; `a=CANDIDATE:` is a
//! candidate the filters see). Media types other than those registered
//! with IANA (RFC 4566 5.14: the list the Go server's SDP parser allows)
//! are refused.

use std::net::IpAddr;

use crate::config::IpList;

/// The media types an SDP may carry (any case).
const MEDIA_TYPES: [&str; 5] = ["audio", "video", "text", "application", "message"];

/// The value of an `a=candidate:` attribute (the attribute name in any
/// case), from the text after `a=`.
fn candidate_attribute(attr: &str) -> Option<&str> {
    let name = attr.get(..10)?;
    name.eq_ignore_ascii_case("candidate:").then(|| &attr[10..])
}

/// Media sections of an SDP that need a publish permission.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Media {
    /// At least one `m=audio`.
    pub audio: bool,
    /// At least one `m=video`.
    pub video: bool,
}

/// Why an SDP or candidate was refused (the texts of the Go server).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SdpError {
    /// The SDP does not parse.
    Sdp(String),
    /// An `a=candidate` line in media section `media` (index `idx` among
    /// the section's attributes) does not parse.
    Candidate {
        /// Index of the media section.
        media: usize,
        /// Index of the attribute in that section.
        idx: usize,
        /// The parse error.
        error: String,
    },
}

/// The parts of a candidate line the filters look at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The connection address (an IP literal or, e.g., an mDNS name).
    pub address: String,
}

/// Parses `candidate:<foundation> <component> <transport> <priority>
/// <address> <port> typ <type> ...` (with or without the `candidate:`
/// prefix).
pub fn parse_candidate(s: &str) -> Result<Candidate, String> {
    let s = s.trim();
    let s = candidate_attribute(s).unwrap_or(s);
    let f: Vec<&str> = s.split_ascii_whitespace().collect();
    if f.len() < 8 {
        return Err(format!(
            "attribute not long enough to be ICE candidate ({})",
            f.len()
        ));
    }
    if f[1].parse::<u16>().is_err() {
        return Err(format!("could not parse component: {}", f[1]));
    }
    if !matches!(f[2].to_ascii_lowercase().as_str(), "udp" | "tcp") {
        return Err(format!("unknown transport: {}", f[2]));
    }
    if f[3].parse::<u32>().is_err() {
        return Err(format!("could not parse priority: {}", f[3]));
    }
    if f[5].parse::<u16>().is_err() {
        return Err(format!("could not parse port: {}", f[5]));
    }
    if f[6] != "typ" || !matches!(f[7], "host" | "srflx" | "prflx" | "relay") {
        return Err(format!("unknown candidate type: {}", f[7]));
    }
    Ok(Candidate {
        address: f[4].to_string(),
    })
}

/// True when a candidate must not reach Janus: its address is no IP
/// literal (mDNS `.local`) or unspecified, or it is in `blocked` and not in
/// `allowed` (the allow list wins).
pub fn is_filtered(c: &Candidate, allowed: &IpList, blocked: &IpList) -> bool {
    let Ok(ip) = c.address.parse::<IpAddr>() else {
        return true;
    };
    if ip.is_unspecified() {
        return true;
    }
    if allowed.contains(ip) {
        return false;
    }
    blocked.contains(ip)
}

/// Checks an SDP and returns which media it carries.
pub fn parse(sdp: &str) -> Result<Media, SdpError> {
    let mut media = Media::default();
    let mut lines = sdp.lines().filter(|l| !l.is_empty());
    match lines.next() {
        Some(l) if l.starts_with("v=") => {}
        _ => return Err(SdpError::Sdp("SDP does not start with v=".into())),
    }
    let mut section: Option<usize> = None;
    let mut idx = 0;
    for line in lines {
        let b = line.as_bytes();
        if b.len() < 2 || b[1] != b'=' || !b[0].is_ascii_lowercase() {
            return Err(SdpError::Sdp(format!("invalid SDP line: {line:.40}")));
        }
        if let Some(m) = line.strip_prefix("m=") {
            section = Some(section.map_or(0, |s| s + 1));
            idx = 0;
            let kind = m.split_ascii_whitespace().next().unwrap_or("");
            if kind.eq_ignore_ascii_case("audio") {
                media.audio = true;
            } else if kind.eq_ignore_ascii_case("video") {
                media.video = true;
            } else if !MEDIA_TYPES.iter().any(|t| kind.eq_ignore_ascii_case(t)) {
                return Err(SdpError::Sdp(format!("sdp: invalid value `{kind:.40}`")));
            }
            continue;
        }
        if let (Some(s), Some(a)) = (section, line.strip_prefix("a=")) {
            if let Some(c) = candidate_attribute(a) {
                if let Err(error) = parse_candidate(c) {
                    return Err(SdpError::Candidate {
                        media: s,
                        idx,
                        error,
                    });
                }
            }
            idx += 1;
        }
    }
    Ok(media)
}

/// A jsep of `kind` (`offer`, `answer`) with a client's SDP, filtered
/// by the `[mcu]` candidate lists.
pub(super) fn jsep(
    kind: &str,
    sdp: &str,
    cfg: &crate::config::mcu::McuConfig,
) -> serde_json::Value {
    let sdp = filter(sdp, &cfg.allowed_candidates, &cfg.blocked_candidates);
    serde_json::json!({"type": kind, "sdp": sdp})
}

/// The SDP without the candidates that [`is_filtered`] removes (line
/// endings kept as they were).
pub fn filter(sdp: &str, allowed: &IpList, blocked: &IpList) -> String {
    let mut out = String::with_capacity(sdp.len());
    for line in sdp.split_inclusive('\n') {
        let content = line.trim_end_matches(['\r', '\n']);
        if let Some(c) = content.strip_prefix("a=").and_then(candidate_attribute) {
            if parse_candidate(c).map_or(true, |c| is_filtered(&c, allowed, blocked)) {
                continue;
            }
        }
        out.push_str(line);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const OFFER: &str = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
        m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\n\
        a=candidate:1 1 udp 2122260223 10.0.0.5 50000 typ host\r\n\
        a=candidate:2 1 udp 2122260223 4b5c.local 50001 typ host\r\n\
        a=candidate:3 1 udp 2122260223 1.2.3.4 50002 typ srflx raddr 0.0.0.0 rport 0\r\n\
        m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:1\r\n";

    #[test]
    fn media_of_an_offer() {
        assert_eq!(
            parse(OFFER),
            Ok(Media {
                audio: true,
                video: true
            })
        );
        assert!(matches!(parse("hello"), Err(SdpError::Sdp(_))));
        let bad = "v=0\r\nm=audio 9 UDP 0\r\na=mid:0\r\na=candidate:1 1 udp x\r\n";
        assert!(matches!(
            parse(bad),
            Err(SdpError::Candidate {
                media: 0,
                idx: 1,
                ..
            })
        ));
    }

    #[test]
    fn read_as_janus_reads_it() {
        let both = Media {
            audio: true,
            video: true,
        };
        for m in [
            "m=VIDEO 9 UDP 96",
            "m=video\t9 UDP 96",
            "m=  Video 9 UDP 96",
        ] {
            let sdp = format!("v=0\r\nm=audio 9 UDP 0\r\n{m}\r\n");
            assert_eq!(parse(&sdp), Ok(both), "{m}");
        }
        for m in [
            "m=application 9 UDP/DTLS/SCTP webrtc-datachannel",
            "m=TEXT 9 x 0",
        ] {
            let sdp = format!("v=0\r\n{m}\r\n");
            assert_eq!(parse(&sdp), Ok(Media::default()), "{m}");
        }
        for m in ["m=vide0 9 UDP 96", "m=", "m=videox 9 UDP 96"] {
            let sdp = format!("v=0\r\n{m}\r\n");
            assert!(
                matches!(parse(&sdp), Err(SdpError::Sdp(ref e)) if e.starts_with("sdp: invalid value")),
                "{m}: {:?}",
                parse(&sdp)
            );
        }
        // An upper-case candidate attribute is checked and filtered too.
        let bad = "v=0\r\nm=audio 9 UDP 0\r\na=CANDIDATE:1 1 udp x\r\n";
        assert!(matches!(parse(bad), Err(SdpError::Candidate { .. })));
        let blocked = IpList::parse("10.0.0.0/8").unwrap();
        let sdp =
            "v=0\r\nm=audio 9 UDP 0\r\na=Candidate:1 1 UDP 1 10.1.2.3 5\ttyp host\r\na=mid:0\r\n";
        let out = filter(sdp, &IpList::default(), &blocked);
        assert!(!out.contains("10.1.2.3"), "{out}");
        assert!(out.contains("a=mid:0"));
        let c = parse_candidate("CANDIDATE:1 1 udp 1 10.1.2.3 5 typ host").unwrap();
        assert!(is_filtered(&c, &IpList::default(), &blocked));
    }

    #[test]
    fn mdns_and_blocked_candidates_are_removed_allowed_wins() {
        let allowed = IpList::parse("1.2.3.4").unwrap();
        let blocked = IpList::parse("1.2.3.0/24, 10.0.0.0/8").unwrap();
        let out = filter(OFFER, &allowed, &blocked);
        assert!(!out.contains("10.0.0.5"));
        assert!(!out.contains(".local"));
        assert!(out.contains("1.2.3.4 50002"));
        assert!(out.contains("m=video"));
        let none = IpList::default();
        let out = filter(OFFER, &none, &none);
        assert!(out.contains("10.0.0.5") && !out.contains(".local"));
        let c = parse_candidate("candidate:1 1 udp 1 0.0.0.0 9 typ host").unwrap();
        assert!(is_filtered(&c, &none, &none));
        assert!(parse_candidate("candidate:1 1 udp 1 1.2.3.4").is_err());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 500, failure_persistence: None, ..Default::default() })]

        /// Client SDPs and candidates never make the parsers panic, and
        /// filtering only ever removes lines.
        #[test]
        fn sdp_and_candidate_parsing_never_panics(
            lines in proptest::collection::vec(
                proptest::prop_oneof![
                    ".{0,40}",
                    "a=candidate:[0-9a-z]{0,4} [0-9]{0,3} (udp|tcp|x) [0-9]{0,11} [0-9a-f.:]{0,20}(\\.local)? [0-9]{0,6} typ (host|srflx|x)( raddr [0-9.]{0,15})?",
                    "m=(audio|video|application) 9 UDP/TLS/RTP/SAVPF 111",
                    "v=0",
                ],
                0..12,
            ),
            crlf in proptest::bool::ANY,
        ) {
            let sdp = lines.join(if crlf { "\r\n" } else { "\n" });
            let _ = parse(&sdp);
            let none = IpList::default();
            let blocked = IpList::parse("10.0.0.0/8, ::/0").unwrap();
            for list in [&none, &blocked] {
                let out = filter(&sdp, &none, list);
                proptest::prop_assert!(out.len() <= sdp.len());
                proptest::prop_assert!(out.lines().all(|l| sdp.lines().any(|x| x == l)));
            }
            for l in &lines {
                let _ = parse_candidate(l);
            }
        }
    }
}
