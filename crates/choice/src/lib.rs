//! Named choices: the enums a config or a command line writes by name (`bf16`, `gpt2`,
//! `cosine`), parsed one way. A type lists its variants and their names once ([`Choice`]);
//! [`choice_text!`] gives it `FromStr`, `Display` and the `String` conversions serde reads and
//! writes it through (`#[serde(try_from = "String", into = "String")]`), and a name that is none
//! of its variants' is one error, [`UnknownChoice`], that lists the valid ones.
//!
//! ```
//! use brainfloat_choice::{Choice, choice_text};
//!
//! #[derive(Debug, Clone, Copy, PartialEq)]
//! enum Fruit {
//!     Apple,
//!     Pear,
//! }
//!
//! impl Choice for Fruit {
//!     const KIND: &'static str = "fruit";
//!     const ALL: &'static [Self] = &[Fruit::Apple, Fruit::Pear];
//!     fn name(self) -> &'static str {
//!         match self {
//!             Fruit::Apple => "apple",
//!             Fruit::Pear => "pear",
//!         }
//!     }
//! }
//! choice_text!(Fruit);
//!
//! assert_eq!("pear".parse::<Fruit>(), Ok(Fruit::Pear));
//! assert_eq!(Fruit::Apple.to_string(), "apple");
//! let err = "plum".parse::<Fruit>().unwrap_err();
//! assert_eq!(err.to_string(), "unknown fruit `plum` (valid: apple, pear)");
//! ```

/// An enum written by name: what it is (for messages), its variants, and each one's name.
pub trait Choice: Copy + 'static {
    /// What the choice is, as a message names it (`model size`).
    const KIND: &'static str;
    /// Every variant, in the order a message lists them.
    const ALL: &'static [Self];

    /// The variant's name, as parsed and written.
    fn name(self) -> &'static str;
}

/// A name that is none of a choice's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} `{name}` (valid: {valid})")]
pub struct UnknownChoice {
    /// What the choice is (`model size`).
    pub kind: &'static str,
    /// The name given.
    pub name: String,
    /// The valid names, comma-separated.
    pub valid: String,
}

/// The variant of `T` named `name`.
pub fn parse_choice<T: Choice>(name: &str) -> Result<T, UnknownChoice> {
    T::ALL
        .iter()
        .copied()
        .find(|choice| choice.name() == name)
        .ok_or_else(|| UnknownChoice {
            kind: T::KIND,
            name: name.to_string(),
            valid: T::ALL
                .iter()
                .map(|choice| choice.name())
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// [`Choice`] for an enum from its kind and each variant's name, and [`choice_text!`]:
/// `choice!(Gelu, "GELU", { Tanh => "tanh", Erf => "erf" })`; or, for a type that has its own
/// `ALL` array and `name` method, from those: `choice!(Preset, "precision preset", own names)`.
#[macro_export]
macro_rules! choice {
    ($type:ident, $kind:literal, own names) => {
        impl $crate::Choice for $type {
            const KIND: &'static str = $kind;
            const ALL: &'static [Self] = &$type::ALL;

            fn name(self) -> &'static str {
                $type::name(self)
            }
        }

        $crate::choice_text!($type);
    };
    ($type:ident, $kind:literal, { $($variant:ident => $name:literal),+ $(,)? }) => {
        impl $crate::Choice for $type {
            const KIND: &'static str = $kind;
            const ALL: &'static [Self] = &[$($type::$variant),+];

            fn name(self) -> &'static str {
                match self {
                    $($type::$variant => $name),+
                }
            }
        }

        $crate::choice_text!($type);
    };
}

/// `FromStr` (through [`parse_choice`]), `Display` (its name), and `TryFrom<String>` and
/// `From<T> for String` for serde, for a type that implements [`Choice`].
#[macro_export]
macro_rules! choice_text {
    ($type:ty) => {
        impl ::std::str::FromStr for $type {
            type Err = $crate::UnknownChoice;

            fn from_str(name: &str) -> ::std::result::Result<Self, $crate::UnknownChoice> {
                $crate::parse_choice(name)
            }
        }

        impl ::std::fmt::Display for $type {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str($crate::Choice::name(*self))
            }
        }

        impl ::std::convert::TryFrom<String> for $type {
            type Error = $crate::UnknownChoice;

            fn try_from(name: String) -> ::std::result::Result<Self, $crate::UnknownChoice> {
                $crate::parse_choice(&name)
            }
        }

        impl ::std::convert::From<$type> for String {
            fn from(choice: $type) -> String {
                $crate::Choice::name(choice).to_string()
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Size {
        Small,
        Large,
    }

    choice!(Size, "size", { Small => "small", Large => "large" });

    #[test]
    fn every_name_round_trips_and_others_are_refused_with_the_valid_ones() {
        for &size in Size::ALL {
            assert_eq!(size.to_string().parse::<Size>(), Ok(size));
            assert_eq!(Size::try_from(String::from(size)), Ok(size));
        }
        let err = "Small".parse::<Size>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown size `Small` (valid: small, large)"
        );
        assert_eq!(err.name, "Small");
    }
}
