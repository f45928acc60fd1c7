//! QEMU's identifier rules, checked before anything reaches QEMU.

use crate::error::{Error, Result};

/// The longest block node name QEMU accepts (its buffer holds 32 bytes with the NUL).
pub const MAX_NODE_NAME_LEN: usize = 31;

/// Which bytes an identifier may hold after its first: ASCII letters, digits, `-`, `.`, `_`
/// (a table: ids are checked for every part of every render).
const ID_BYTES: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        // `b` is below 256: the cast cannot truncate.
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric() || c == b'-' || c == b'.' || c == b'_';
        b += 1;
    }
    table
};

/// Checks an identifier against QEMU's `id_wellformed()` rule: a letter first, then letters,
/// digits, `-`, `.` or `_`. Device ids, chardev ids, netdev ids, object ids and node names all
/// follow it; QEMU rejects anything else, and a `,` or `=` could otherwise smuggle options in.
///
/// ```
/// use hvarch_devices::id::check_id;
/// assert!(check_id("virtio-blk", "id", "disk-0").is_ok());
/// assert!(check_id("virtio-blk", "id", "0disk").is_err());
/// assert!(check_id("virtio-blk", "id", "a,b=c").is_err());
/// ```
pub fn check_id(what: &'static str, field: &'static str, id: &str) -> Result<()> {
    let bad = |reason| {
        Err(Error::InvalidId {
            what,
            field,
            value: id.to_owned(),
            reason,
        })
    };
    // Every allowed character is ASCII, so bytes suffice (a non-ASCII byte is refused).
    let mut bytes = id.bytes();
    match bytes.next() {
        None => return Err(Error::MissingField { what, field }),
        Some(b) if !b.is_ascii_alphabetic() => return bad("must start with an ASCII letter"),
        Some(_) => {}
    }
    if !bytes.all(|b| ID_BYTES[usize::from(b)]) {
        return bad("may contain only ASCII letters, digits, '-', '.' and '_'");
    }
    Ok(())
}

/// Checks a block node name: an identifier of at most [`MAX_NODE_NAME_LEN`] bytes.
pub fn check_node_name(what: &'static str, field: &'static str, name: &str) -> Result<()> {
    check_id(what, field, name)?;
    if name.len() > MAX_NODE_NAME_LEN {
        return Err(Error::InvalidId {
            what,
            field,
            value: name.to_owned(),
            reason: "block node names are limited to 31 bytes",
        });
    }
    Ok(())
}

/// Checks an optional identifier.
pub(crate) fn check_opt_id(
    what: &'static str,
    field: &'static str,
    id: Option<&str>,
) -> Result<()> {
    id.map_or(Ok(()), |id| check_id(what, field, id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_qemu_ids() {
        for id in ["a", "disk0", "pci-bridge-0", "rp.1", "net_0", "Z9"] {
            check_id("t", "id", id).unwrap();
        }
    }

    #[test]
    fn rejects_bad_ids_naming_the_field() {
        for id in ["", "0a", "-a", "a b", "a,b", "a=b", "é", "a/b"] {
            let err = check_id("virtio-blk", "id", id).unwrap_err();
            let msg = err.to_string();
            assert!(msg.contains("virtio-blk"), "{msg}");
            assert!(msg.contains("id"), "{msg}");
        }
    }

    /// Every byte value after the first: the table says what QEMU's rule says.
    #[test]
    fn the_byte_table_is_qemus_rule() {
        for b in 0..=u8::MAX {
            let rule = b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_');
            assert_eq!(ID_BYTES[usize::from(b)], rule, "byte {b:#04x}");
            let id = String::from_utf8_lossy(&[b'a', b]).into_owned();
            assert_eq!(check_id("t", "id", &id).is_ok(), rule, "{id:?}");
        }
    }

    #[test]
    fn node_names_are_short() {
        check_node_name("b", "node-name", &"a".repeat(31)).unwrap();
        assert!(check_node_name("b", "node-name", &"a".repeat(32)).is_err());
    }
}
