//! Loading a [`VmSpec`] from a TOML file, with errors that name the file and the field.

use std::path::Path;

use hvarch::VmSpec;

/// Reads and parses `path`. The error names the file; TOML errors also carry the line,
/// column and field (`unknown field `num_vcpu``, `invalid type … for key hypervisor.memory_mb`).
pub fn load(path: &Path) -> Result<VmSpec, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("{}: cannot read spec file: {e}", path.display()))?;
    parse(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Parses spec text.
pub fn parse(text: &str) -> Result<VmSpec, String> {
    toml::from_str(text).map_err(|e| format!("invalid spec: {}", e.to_string().trim_end()))
}
