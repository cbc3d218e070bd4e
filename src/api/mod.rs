//! Wire types only (serde), no logic.

/// Declares the enum of a `type` field that arrives: one variant per known
/// value, and `Unknown(String)` for any other (kept for the error that
/// names it), so that the code matches on variants, never on strings.
macro_rules! wire_kind {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $first:literal $(| $alt:literal)*, )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )*
            /// Any other value.
            Unknown(String),
        }

        impl $name {
            /// The value as sent (for a known value with several spellings,
            /// the first).
            pub fn as_str(&self) -> &str {
                match self {
                    $( $name::$variant => $first, )*
                    $name::Unknown(s) => s,
                }
            }

            /// The variant of a value.
            pub fn parse(s: &str) -> Self {
                match s {
                    $( $first $(| $alt)* => $name::$variant, )*
                    _ => $name::Unknown(s.to_string()),
                }
            }

            /// The variant of a JSON field (a missing or non-string field
            /// is `Unknown("")`).
            pub fn of(v: &serde_json::Value) -> Self {
                Self::parse(v.as_str().unwrap_or(""))
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = std::borrow::Cow::<'de, str>::deserialize(d)?;
                Ok(Self::parse(&s))
            }
        }
    };
}

pub mod backend;
pub mod client;
pub mod error;
pub mod proxy;
pub mod remote;
pub mod server;
