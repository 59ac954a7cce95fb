//! What is checked before a plugin library is opened: a library is code the process
//! runs (its static constructors run inside `dlopen`, before any ABI check), so it is
//! opened only if nobody but its owner could have put it there, as ssh treats its keys.
//!
//! - [`check_ownership`]: the file's resolved path (symbolic links followed) is a
//!   regular file owned by the user or root and not writable by group or others; so is
//!   its directory; every directory above is owned by the user or root and is either
//!   not writable by group or others, or is world-writable with the sticky bit (like
//!   `/tmp`, where nobody can replace another user's entries). The resolved path is
//!   what gets opened, so a link cannot be swapped between check and load.
//! - [`exports_root_module`]: the file is an ELF shared object whose dynamic symbol
//!   table defines abi_stable's root-module loader; a shared library that is not a sat
//!   plugin (libtorch, libm, a stray file) is refused before its constructors run.
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// This process's effective user id: the owner of `/proc/self` (Linux), else of a file
/// it creates.
#[cfg(unix)]
fn effective_uid() -> Result<u32, String> {
    use std::os::unix::fs::MetadataExt;
    if let Ok(m) = std::fs::metadata("/proc/self") {
        return Ok(m.uid());
    }
    let probe = std::env::temp_dir().join(format!(".sat-uid-{}", std::process::id()));
    let file = std::fs::File::create_new(&probe)
        .map_err(|e| format!("cannot tell this process's user id: {e}"))?;
    let uid = file.metadata().map(|m| m.uid());
    let _ = std::fs::remove_file(&probe);
    uid.map_err(|e| format!("cannot tell this process's user id: {e}"))
}

/// The resolved path of `file` if it and every directory on its way may be trusted;
/// else why not.
pub fn check_ownership(file: &Path) -> Result<PathBuf, String> {
    let resolved = file
        .canonicalize()
        .map_err(|e| format!("cannot resolve {}: {e}", file.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let me = effective_uid()?;
        let meta = |p: &Path| std::fs::metadata(p).map_err(|e| format!("{}: {e}", p.display()));
        let owner_ok = |m: &std::fs::Metadata| m.uid() == me || m.uid() == 0;
        let f = meta(&resolved)?;
        if !f.is_file() {
            return Err(format!("{} is not a regular file", resolved.display()));
        }
        if !owner_ok(&f) {
            return Err(format!(
                "{} is owned by uid {}, neither you nor root",
                resolved.display(),
                f.uid()
            ));
        }
        if f.mode() & 0o022 != 0 {
            return Err(format!(
                "{} is writable by {} (mode {:o}); make it writable by its owner only (chmod go-w)",
                resolved.display(),
                if f.mode() & 0o002 != 0 {
                    "others (world-writable)"
                } else {
                    "its group"
                },
                f.mode() & 0o7777
            ));
        }
        let mut first = true;
        for dir in resolved.ancestors().skip(1) {
            let d = meta(dir)?;
            if !owner_ok(&d) {
                return Err(format!(
                    "the directory {} is owned by uid {}, neither you nor root",
                    dir.display(),
                    d.uid()
                ));
            }
            let writable = d.mode() & 0o022 != 0;
            let sticky = d.mode() & 0o1000 != 0;
            // The library's own directory must be private; a sticky, world-writable
            // ancestor (such as /tmp) cannot have its entries replaced by others.
            if writable && (first || !sticky) {
                return Err(format!(
                    "the directory {} is {} (mode {:o}); anyone who can write it could plant a library",
                    dir.display(),
                    if d.mode() & 0o002 != 0 { "world-writable" } else { "group-writable" },
                    d.mode() & 0o7777
                ));
            }
            first = false;
        }
    }
    Ok(resolved)
}

const MAX_TABLE: u64 = 256 << 20;

fn read_at(f: &mut std::fs::File, offset: u64, len: u64, file_len: u64) -> Result<Vec<u8>, String> {
    if len > MAX_TABLE || offset.checked_add(len).is_none_or(|end| end > file_len) {
        return Err("a table lies outside the file".into());
    }
    f.seek(SeekFrom::Start(offset)).map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; len as usize];
    f.read_exact(&mut buf).map_err(|e| e.to_string())?;
    Ok(buf)
}

fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}
fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"))
}
fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"))
}

/// Whether `file` is a 64-bit little-endian ELF shared object that defines `symbol` in
/// its dynamic symbol table; read without loading it (no code of it runs).
pub fn exports_symbol(file: &Path, symbol: &str) -> Result<(), String> {
    let mut f = std::fs::File::open(file).map_err(|e| e.to_string())?;
    let len = f.metadata().map_err(|e| e.to_string())?.len();
    let header =
        read_at(&mut f, 0, 64, len).map_err(|_| "too short for an ELF file".to_string())?;
    if &header[..4] != b"\x7fELF" {
        return Err("not an ELF file".into());
    }
    if header[4] != 2 || header[5] != 1 {
        return Err("not a 64-bit little-endian ELF file".into());
    }
    if u16_at(&header, 16) != 3 {
        return Err("not an ELF shared object".into());
    }
    let (shoff, shentsize, shnum) = (
        u64_at(&header, 0x28),
        u16_at(&header, 0x3A) as u64,
        u16_at(&header, 0x3C) as u64,
    );
    if shentsize < 64 {
        return Err("no section headers".into());
    }
    let sections = read_at(&mut f, shoff, shentsize * shnum, len)?;
    let section = |i: u64| &sections[(i * shentsize) as usize..(i * shentsize + 64) as usize];
    let dynsym = (0..shnum)
        .map(section)
        .find(|s| u32_at(s, 4) == 11)
        .ok_or("no dynamic symbol table")?;
    let strtab_index = u32_at(dynsym, 0x28) as u64;
    if strtab_index >= shnum {
        return Err("a broken dynamic symbol table".into());
    }
    let strtab = section(strtab_index);
    let symbols = read_at(&mut f, u64_at(dynsym, 0x18), u64_at(dynsym, 0x20), len)?;
    let names = read_at(&mut f, u64_at(strtab, 0x18), u64_at(strtab, 0x20), len)?;
    let entsize = u64_at(dynsym, 0x38).max(24) as usize;
    let found = symbols.chunks_exact(entsize).any(|sym| {
        let name = u32_at(sym, 0) as usize;
        let defined = u16_at(sym, 6) != 0;
        defined
            && names
                .get(name..)
                .and_then(|rest| rest.split(|&b| b == 0).next())
                .is_some_and(|n| n == symbol.as_bytes())
    });
    if found {
        Ok(())
    } else {
        Err(format!("it does not export `{symbol}`"))
    }
}

/// Whether `file` exports abi_stable's root-module loader (see [`exports_symbol`]).
pub fn exports_root_module(file: &Path) -> Result<(), String> {
    if cfg!(all(
        target_os = "linux",
        target_endian = "little",
        target_pointer_width = "64"
    )) {
        exports_symbol(file, abi_stable::library::ROOT_MODULE_LOADER_NAME)
    } else {
        // Other formats (Mach-O, PE) are not parsed: the ownership check is what
        // protects there.
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn host_library() -> PathBuf {
        // A plugin library the workspace builds, next to the test executable's deps.
        let exe = std::env::current_exe().unwrap();
        exe.parent()
            .unwrap()
            .parent()
            .unwrap()
            .join("libsat_plugin_attacks.so")
    }

    #[test]
    fn a_private_copy_passes_and_writable_places_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let lib = dir.path().join("libx.so");
        std::fs::write(&lib, b"x").unwrap();
        std::fs::set_permissions(&lib, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(check_ownership(&lib).unwrap(), lib.canonicalize().unwrap());
        std::fs::set_permissions(&lib, std::fs::Permissions::from_mode(0o664)).unwrap();
        assert!(check_ownership(&lib).unwrap_err().contains("group"));
        std::fs::set_permissions(&lib, std::fs::Permissions::from_mode(0o646)).unwrap();
        assert!(check_ownership(&lib)
            .unwrap_err()
            .contains("world-writable"));
        std::fs::set_permissions(&lib, std::fs::Permissions::from_mode(0o644)).unwrap();
        // The library's own directory: no sticky exception.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
        assert!(check_ownership(&lib)
            .unwrap_err()
            .contains("world-writable"));
        // A writable ancestor without the sticky bit.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        std::fs::set_permissions(&sub, std::fs::Permissions::from_mode(0o755)).unwrap();
        let inner = sub.join("liby.so");
        std::fs::write(&inner, b"y").unwrap();
        std::fs::set_permissions(&inner, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(check_ownership(&inner)
            .unwrap_err()
            .contains(&dir.path().display().to_string()));
        // … with it (like /tmp), accepted.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
        assert!(check_ownership(&inner).is_ok());
        // A link into a writable place is judged by its target.
        let safe = tempfile::tempdir().unwrap();
        let link = safe.path().join("libz.so");
        std::fs::set_permissions(&inner, std::fs::Permissions::from_mode(0o666)).unwrap();
        std::os::unix::fs::symlink(&inner, &link).unwrap();
        assert!(check_ownership(&link).unwrap_err().contains("liby.so"));
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    }

    #[test]
    fn the_elf_check_finds_the_root_module_and_refuses_other_files() {
        let lib = host_library();
        if lib.exists() {
            exports_root_module(&lib).unwrap();
        }
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("libjunk.so");
        std::fs::write(&junk, b"\x7fELF\x02\x01 truncated").unwrap();
        assert!(exports_root_module(&junk).is_err());
        std::fs::write(&junk, [b'n'; 100]).unwrap();
        assert_eq!(exports_root_module(&junk).unwrap_err(), "not an ELF file");
        let libm = [
            "/lib/x86_64-linux-gnu/libm.so.6",
            "/usr/lib/x86_64-linux-gnu/libm.so.6",
            "/lib64/libm.so.6",
        ]
        .into_iter()
        .map(Path::new)
        .find(|p| p.exists());
        if let Some(libm) = libm {
            assert!(exports_root_module(libm)
                .unwrap_err()
                .contains("does not export"));
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: crate::fuzz_cases(256), ..Default::default() })]
        /// Any bytes after an ELF64 header: an answer, never a panic or a huge allocation.
        #[test]
        fn any_elf_like_bytes_are_read_cleanly(tail in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
            let dir = tempfile::tempdir().unwrap();
            let f = dir.path().join("lib.so");
            let mut bytes = b"\x7fELF\x02\x01\x01\x00".to_vec();
            bytes.extend_from_slice(&[0; 8]);
            bytes.extend_from_slice(&[3, 0]);
            bytes.extend_from_slice(&tail);
            std::fs::write(&f, &bytes).unwrap();
            let _ = exports_symbol(&f, "x");
        }
    }
}
