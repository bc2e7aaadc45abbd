//! Money: exact decimal dollars in code, integer nano-dollars in the database.
//!
//! Why two types: `rust_decimal::Decimal` is exact in arithmetic, but sea-orm reads `Decimal`
//! columns on SQLite through `f64`, which loses cents on large sums. So the database holds
//! [`NanoUsd`] (an `i64` count of 10⁻⁹ dollars, exact on both SQLite and PostgreSQL, ±9.2e9 USD),
//! and code computes with [`Usd`].
//!
//! Rounding rule: nothing is rounded until it is shown. [`Usd::round_cents`] and `Display` round
//! **half away from zero** to cents (0.125 → 0.13, −2.345 → −2.35), which is what invoices do, not
//! the banker's rounding that `Decimal::round_dp` uses by default.

use std::fmt;
use std::iter::Sum;
use std::ops::{Add, AddAssign, Mul, Neg, Sub, SubAssign};
use std::str::FromStr;

use rust_decimal::{Decimal, RoundingStrategy};
use serde::{Deserialize, Serialize};

/// Nano-dollars per dollar.
pub const NANOS_PER_USD: i64 = 1_000_000_000;

/// Errors converting or parsing money.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    /// The text is not a decimal dollar amount.
    #[error("not a dollar amount: {0:?} (expected e.g. 12.50 or $12.50)")]
    Parse(String),
    /// The amount does not fit in the database's integer nano-dollars (±9.2e9 USD).
    #[error("amount {0} USD is out of range for nano-dollar storage (±9.2e9 USD)")]
    OutOfRange(Decimal),
}

/// An exact amount of US dollars. Arithmetic never rounds (within `Decimal`'s 28 digits).
///
/// Serialized as an exact decimal string without trailing zeros (`"0.6897438611"`, `"20"`),
/// so JSON readers never see a float.
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Usd(pub Decimal);

impl Serialize for Usd {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0.normalize().to_string())
    }
}

impl<'de> Deserialize<'de> for Usd {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        <Decimal as Deserialize<'de>>::deserialize(d).map(Usd)
    }
}

impl Usd {
    pub const ZERO: Usd = Usd(Decimal::ZERO);

    pub fn new(amount: Decimal) -> Self {
        Usd(amount)
    }

    /// The exact amount.
    pub fn amount(self) -> Decimal {
        self.0
    }

    pub fn is_zero(self) -> bool {
        self.0.is_zero()
    }

    pub fn is_negative(self) -> bool {
        self.0.is_sign_negative() && !self.0.is_zero()
    }

    /// Rounded to cents, half away from zero. For display and settlement only.
    pub fn round_cents(self) -> Decimal {
        self.0
            .round_dp_with_strategy(2, RoundingStrategy::MidpointAwayFromZero)
    }

    /// The amount with trailing zeros removed (`0.10000000` → `0.1`), still exact.
    pub fn normalized(self) -> Decimal {
        self.0.normalize()
    }

    /// Converts to nano-dollars, rounding half away from zero at the ninth decimal.
    ///
    /// The ledger never calls this on a value that matters for conservation without keeping the
    /// sub-nano remainder (see `Ledger::record_interval`), so stored totals stay within half a
    /// nano-dollar of the exact sum.
    pub fn to_nano(self) -> Result<NanoUsd, MoneyError> {
        let scaled = (self.0 * Decimal::from(NANOS_PER_USD))
            .round_dp_with_strategy(0, RoundingStrategy::MidpointAwayFromZero);
        i64::try_from(scaled)
            .map(NanoUsd)
            .map_err(|_| MoneyError::OutOfRange(self.0))
    }

    /// Converts to nano-dollars and returns the exact remainder that rounding dropped
    /// (`self == nano.to_usd() + remainder`, |remainder| ≤ 0.5 nano-dollar).
    pub fn to_nano_with_remainder(self) -> Result<(NanoUsd, Usd), MoneyError> {
        let nano = self.to_nano()?;
        Ok((nano, self - nano.to_usd()))
    }

    /// Shows the amount rounded to cents with a dollar sign: `$0.69`, `-$1.50`.
    pub fn display_cents(self) -> String {
        let c = self.round_cents();
        if c.is_sign_negative() && !c.is_zero() {
            format!("-${:.2}", -c)
        } else {
            format!("${:.2}", c.abs())
        }
    }
}

impl fmt::Display for Usd {
    /// Rounded to cents, half away from zero (see the module docs).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.display_cents())
    }
}

impl fmt::Debug for Usd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Usd({})", self.0)
    }
}

impl FromStr for Usd {
    type Err = MoneyError;

    /// Accepts `12.5`, `12.50`, `$12.50`, ` 3 `.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let t = t.strip_prefix('$').unwrap_or(t).trim();
        if t.is_empty() {
            return Err(MoneyError::Parse(s.to_string()));
        }
        Decimal::from_str_exact(t)
            .map(Usd)
            .map_err(|_| MoneyError::Parse(s.to_string()))
    }
}

impl From<Decimal> for Usd {
    fn from(d: Decimal) -> Self {
        Usd(d)
    }
}

impl From<NanoUsd> for Usd {
    fn from(n: NanoUsd) -> Self {
        n.to_usd()
    }
}

impl Add for Usd {
    type Output = Usd;
    fn add(self, rhs: Usd) -> Usd {
        Usd(self.0 + rhs.0)
    }
}

impl Sub for Usd {
    type Output = Usd;
    fn sub(self, rhs: Usd) -> Usd {
        Usd(self.0 - rhs.0)
    }
}

impl Neg for Usd {
    type Output = Usd;
    fn neg(self) -> Usd {
        Usd(-self.0)
    }
}

impl AddAssign for Usd {
    fn add_assign(&mut self, rhs: Usd) {
        self.0 += rhs.0;
    }
}

impl SubAssign for Usd {
    fn sub_assign(&mut self, rhs: Usd) {
        self.0 -= rhs.0;
    }
}

impl Mul<Decimal> for Usd {
    type Output = Usd;
    fn mul(self, rhs: Decimal) -> Usd {
        Usd(self.0 * rhs)
    }
}

impl Sum for Usd {
    fn sum<I: Iterator<Item = Usd>>(iter: I) -> Usd {
        iter.fold(Usd::ZERO, |a, b| a + b)
    }
}

impl<'a> Sum<&'a Usd> for Usd {
    fn sum<I: Iterator<Item = &'a Usd>>(iter: I) -> Usd {
        iter.fold(Usd::ZERO, |a, b| a + *b)
    }
}

/// An integer number of nano-dollars (10⁻⁹ USD): how the database stores money.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct NanoUsd(pub i64);

impl NanoUsd {
    pub const ZERO: NanoUsd = NanoUsd(0);

    /// Exact: `Decimal::new(n, 9)`.
    pub fn to_usd(self) -> Usd {
        Usd(Decimal::new(self.0, 9))
    }

    pub fn checked_add(self, rhs: NanoUsd) -> Option<NanoUsd> {
        self.0.checked_add(rhs.0).map(NanoUsd)
    }
}

impl Add for NanoUsd {
    type Output = NanoUsd;
    fn add(self, rhs: NanoUsd) -> NanoUsd {
        NanoUsd(self.0 + rhs.0)
    }
}

impl Sub for NanoUsd {
    type Output = NanoUsd;
    fn sub(self, rhs: NanoUsd) -> NanoUsd {
        NanoUsd(self.0 - rhs.0)
    }
}

impl Sum for NanoUsd {
    fn sum<I: Iterator<Item = NanoUsd>>(iter: I) -> NanoUsd {
        iter.fold(NanoUsd::ZERO, |a, b| a + b)
    }
}

impl TryFrom<Usd> for NanoUsd {
    type Error = MoneyError;
    fn try_from(u: Usd) -> Result<Self, Self::Error> {
        u.to_nano()
    }
}

impl From<NanoUsd> for sea_orm::Value {
    fn from(n: NanoUsd) -> Self {
        sea_orm::Value::BigInt(Some(n.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rust_decimal_macros::dec;

    #[test]
    fn rounds_half_away_from_zero_to_cents() {
        assert_eq!(Usd(dec!(2.345)).round_cents(), dec!(2.35));
        assert_eq!(Usd(dec!(-2.345)).round_cents(), dec!(-2.35));
        assert_eq!(Usd(dec!(0.125)).round_cents(), dec!(0.13));
        assert_eq!(Usd(dec!(2.355)).round_cents(), dec!(2.36));
        assert_eq!(Usd(dec!(0.6897438611)).to_string(), "$0.69");
        assert_eq!(Usd(dec!(-1.5)).to_string(), "-$1.50");
        assert_eq!(Usd(dec!(-0.001)).to_string(), "$0.00");
    }

    #[test]
    fn nano_round_trip_is_exact() {
        for s in ["0.1", "0.2", "123456789.123456789", "-0.000000001", "0"] {
            let u: Usd = s.parse().unwrap();
            let n = u.to_nano().unwrap();
            assert_eq!(n.to_usd(), u, "{s}");
        }
        let (n, rem) = Usd(dec!(0.0000000015)).to_nano_with_remainder().unwrap();
        assert_eq!(n, NanoUsd(2));
        assert_eq!(rem, Usd(dec!(-0.0000000005)));
        assert_eq!(n.to_usd() + rem, Usd(dec!(0.0000000015)));
    }

    #[test]
    fn out_of_range_is_an_error() {
        let err = Usd(dec!(10000000000)).to_nano().unwrap_err();
        assert!(err.to_string().contains("out of range"), "{err}");
    }

    #[test]
    fn parses_user_input() {
        assert_eq!("$12.50".parse::<Usd>().unwrap(), Usd(dec!(12.50)));
        assert_eq!(" 3 ".parse::<Usd>().unwrap(), Usd(dec!(3)));
        assert!("twelve".parse::<Usd>().is_err());
        assert!("".parse::<Usd>().is_err());
        assert!("$".parse::<Usd>().is_err());
    }

    #[test]
    fn serializes_as_exact_string() {
        let j = serde_json::to_string(&Usd(dec!(0.100000000))).unwrap();
        assert_eq!(j, "\"0.1\"");
        assert_eq!(
            serde_json::to_string(&NanoUsd(20_000_000_000).to_usd()).unwrap(),
            "\"20\""
        );
        let back: Usd = serde_json::from_str(&j).unwrap();
        assert_eq!(back, Usd(dec!(0.1)));
    }
}
