//! The POSIX (ustar) tar members of a shard: 512-byte headers, data padded to 512 bytes,
//! two zero blocks at the end. Only regular files with names of at most 100 bytes are
//! written or accepted, which is all a shard holds.

/// The tar block size.
pub const BLOCK: u64 = 512;

/// `size` rounded up to whole blocks.
pub fn padded(size: u64) -> u64 {
    size.div_ceil(BLOCK) * BLOCK
}

/// Writes `value` as zero-padded octal digits followed by a NUL into `field`.
fn octal(field: &mut [u8], value: u64) {
    let digits = field.len() - 1;
    let text = format!("{value:0digits$o}");
    field[..digits].copy_from_slice(&text.as_bytes()[text.len() - digits..]);
    field[digits] = 0;
}

/// The header of a regular file `name` of `size` bytes (mode 0644, owner 0, mtime 0, so
/// that a shard's bytes depend on its samples alone).
pub fn header(name: &str, size: u64) -> Result<[u8; 512], String> {
    if name.is_empty() || name.len() > 100 {
        return Err(format!("tar member name `{name}` must be 1 to 100 bytes"));
    }
    if size >= 8u64.pow(11) {
        return Err(format!(
            "tar member `{name}` of {size} bytes is over the 8 GiB a ustar header holds"
        ));
    }
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    octal(&mut h[100..108], 0o644);
    octal(&mut h[108..116], 0);
    octal(&mut h[116..124], 0);
    octal(&mut h[124..136], size);
    octal(&mut h[136..148], 0);
    h[156] = b'0';
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].fill(b' ');
    let sum: u64 = h.iter().map(|&b| b as u64).sum();
    octal(&mut h[148..155], sum);
    h[155] = b' ';
    Ok(h)
}

/// A member's name and data size, from its header; `None` for a zero block (the end of
/// the archive). The checksum, the type (a regular file) and the size are checked.
pub fn parse_header(h: &[u8]) -> Result<Option<(String, u64)>, String> {
    if h.len() < BLOCK as usize {
        return Err("truncated tar header".into());
    }
    if h[..512].iter().all(|&b| b == 0) {
        return Ok(None);
    }
    let field = |range: std::ops::Range<usize>| -> Result<u64, String> {
        let text: String = h[range]
            .iter()
            .take_while(|&&b| b != 0)
            .map(|&b| b as char)
            .collect();
        let text = text.trim();
        u64::from_str_radix(if text.is_empty() { "0" } else { text }, 8)
            .map_err(|_| format!("bad octal field `{text}` in a tar header"))
    };
    let stored = field(148..156)?;
    let sum: u64 = h[..512]
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                b' ' as u64
            } else {
                b as u64
            }
        })
        .sum();
    if sum != stored {
        return Err("tar header checksum mismatch (a corrupt or misaligned shard)".into());
    }
    if !matches!(h[156], b'0' | 0) {
        return Err(format!(
            "tar member of type `{}` is not a regular file",
            h[156] as char
        ));
    }
    let name_end = h[..100].iter().position(|&b| b == 0).unwrap_or(100);
    let name = std::str::from_utf8(&h[..name_end])
        .map_err(|_| "tar member name is not UTF-8".to_string())?
        .to_string();
    Ok(Some((name, field(124..136)?)))
}

/// The members in `span` (whole members, header first): `(name, data)` pairs.
pub fn members(span: &[u8]) -> Result<Vec<(String, &[u8])>, String> {
    let mut out = Vec::new();
    let mut at = 0usize;
    while at < span.len() {
        let Some((name, size)) = parse_header(&span[at..])? else {
            break;
        };
        let start = at + BLOCK as usize;
        let end = start
            .checked_add(size as usize)
            .filter(|&e| e <= span.len())
            .ok_or_else(|| {
                format!("tar member `{name}` runs past its sample's bytes ({size} bytes)")
            })?;
        out.push((name, &span[start..end]));
        at = start + padded(size) as usize;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip_and_checksums_catch_damage() {
        let h = header("00000001_a.cls", 3).unwrap();
        assert_eq!(
            parse_header(&h).unwrap(),
            Some(("00000001_a.cls".into(), 3))
        );
        let mut bad = h;
        bad[0] ^= 1;
        assert!(parse_header(&bad).unwrap_err().contains("checksum"));
        assert_eq!(parse_header(&[0u8; 512]).unwrap(), None);
        assert!(header(&"x".repeat(101), 1).is_err());
        let mut span = h.to_vec();
        span.extend(b"12\n");
        span.resize(1024, 0);
        assert_eq!(
            members(&span).unwrap(),
            vec![("00000001_a.cls".to_string(), &b"12\n"[..])]
        );
        span.truncate(514);
        assert!(members(&span).unwrap_err().contains("runs past"));
    }

    #[test]
    fn the_system_tar_reads_a_member() {
        // A header GNU tar accepts (the format other tools read).
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = header("k.cls", 2).unwrap().to_vec();
        bytes.extend(b"7\n");
        bytes.resize(512 * 4, 0);
        let path = dir.path().join("s.tar");
        std::fs::write(&path, bytes).unwrap();
        let out = std::process::Command::new("tar")
            .arg("-tvf")
            .arg(&path)
            .output()
            .expect("GNU tar runs");
        let listing = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && listing.contains("k.cls"),
            "{listing}"
        );
    }
}
