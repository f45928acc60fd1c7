//! PCI addresses of devices on a bus (`addr=`).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A device's address on its PCI bus: slot 0–31 and function 0–7.
///
/// Written `"02"` or `"02.1"` (hex, as QEMU's `addr=` property reads it); parsed from that form,
/// with or without `0x`.
///
/// ```
/// use hvarch_devices::pci::PciAddr;
/// let addr: PciAddr = "0x1f.7".parse().unwrap();
/// assert_eq!((addr.slot(), addr.function()), (31, 7));
/// assert_eq!(PciAddr::slot_only(2).unwrap().to_string(), "02");
/// assert!("20".parse::<PciAddr>().is_err()); // slot 0x20 does not exist
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PciAddr {
    slot: u8,
    function: u8,
}

/// Why a PCI address was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid PCI address {input:?}: {reason}")]
pub struct PciAddrError {
    input: String,
    reason: &'static str,
}

impl PciAddr {
    /// The highest slot number.
    pub const MAX_SLOT: u8 = 31;
    /// The highest function number.
    pub const MAX_FUNCTION: u8 = 7;

    /// Slot `slot`, function `function`.
    pub fn new(slot: u8, function: u8) -> Result<Self, PciAddrError> {
        let err = |reason| PciAddrError {
            input: format!("{slot:x}.{function:x}"),
            reason,
        };
        if slot > Self::MAX_SLOT {
            return Err(err("slot must be at most 0x1f"));
        }
        if function > Self::MAX_FUNCTION {
            return Err(err("function must be at most 7"));
        }
        Ok(PciAddr { slot, function })
    }

    /// Slot `slot`, function 0.
    pub fn slot_only(slot: u8) -> Result<Self, PciAddrError> {
        PciAddr::new(slot, 0)
    }

    /// The slot.
    pub fn slot(self) -> u8 {
        self.slot
    }

    /// The function.
    pub fn function(self) -> u8 {
        self.function
    }
}

impl fmt::Display for PciAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.function == 0 {
            write!(f, "{:02x}", self.slot)
        } else {
            write!(f, "{:02x}.{:x}", self.slot, self.function)
        }
    }
}

impl FromStr for PciAddr {
    type Err = PciAddrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| PciAddrError {
            input: s.to_owned(),
            reason,
        };
        let hex = |part: &str| {
            let digits = part.strip_prefix("0x").unwrap_or(part);
            if digits.is_empty() || digits.len() > 2 {
                return Err(err("expected 1 or 2 hex digits"));
            }
            u8::from_str_radix(digits, 16).map_err(|_| err("not a hex number"))
        };
        let (slot, function) = match s.split_once('.') {
            Some((slot, function)) => (hex(slot)?, hex(function)?),
            None => (hex(s)?, 0),
        };
        PciAddr::new(slot, function).map_err(|e| PciAddrError {
            input: s.to_owned(),
            reason: e.reason,
        })
    }
}

impl Serialize for PciAddr {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PciAddr {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn display_parse_round_trip(slot in 0u8..=31, function in 0u8..=7) {
            let addr = PciAddr::new(slot, function).unwrap();
            prop_assert_eq!(addr.to_string().parse::<PciAddr>().unwrap(), addr);
        }

        #[test]
        fn parse_never_panics(s in "\\PC{0,8}") {
            let _ = s.parse::<PciAddr>();
        }
    }

    #[test]
    fn rejects_out_of_range() {
        assert!(PciAddr::new(32, 0).is_err());
        assert!(PciAddr::new(0, 8).is_err());
        assert!("ff".parse::<PciAddr>().is_err());
        assert!("1.8".parse::<PciAddr>().is_err());
        assert!("".parse::<PciAddr>().is_err());
    }
}
