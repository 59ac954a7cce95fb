//! Plugin discovery, listing and loading errors, against the real binary and libraries.
use sat_tests::{library, plugin_dir, sat, write};

#[test]
fn lists_the_standard_components_with_kinds_as_json() {
    let cwd = tempfile::tempdir().unwrap();
    let out = sat(cwd.path(), &["plugins", "--json"], &[]).success();
    let items: Vec<serde_json::Value> = serde_json::from_str(&out.stdout).expect("valid JSON");
    let kind_of = |name: &str| {
        items
            .iter()
            .find(|i| i["name"] == name)
            .map(|i| i["kind"].as_str().unwrap().to_owned())
    };
    for attack in ["fgsm", "fgsm-rs", "pgd", "noise", "sat"] {
        assert_eq!(kind_of(attack).as_deref(), Some("attack"), "{attack}");
    }
    for source in ["boxes", "masks"] {
        assert_eq!(kind_of(source).as_deref(), Some("saliency"), "{source}");
    }
    let pgd = items.iter().find(|i| i["name"] == "pgd").unwrap();
    assert!(pgd["default_config"]
        .as_str()
        .unwrap()
        .contains("steps = 10"));
    assert!(pgd["path"]
        .as_str()
        .unwrap()
        .ends_with("libsat_plugin_attacks.so"));
    // Loaded libraries are logged with their absolute paths and versions.
    assert!(out.stderr.contains("libtorch 2.13.0"), "{}", out.stderr);
}

#[test]
fn describe_shows_defaults_and_suggests_on_typos() {
    let cwd = tempfile::tempdir().unwrap();
    let out = sat(cwd.path(), &["plugins", "describe", "sat"], &[]).success();
    assert!(
        out.stdout.contains("kind:        attack") && out.stdout.contains("base = 0.6"),
        "{}",
        out.stdout
    );
    sat(cwd.path(), &["plugins", "describe", "maskz"], &[])
        .fails_with(&["no component `maskz`", "did you mean `masks`"]);
}

#[test]
fn third_party_example_loads_from_plugin_dir_and_env() {
    let cwd = tempfile::tempdir().unwrap();
    let dir = plugin_dir(&["centre_prior"]);
    let d = dir.path().to_str().unwrap();
    let out = sat(cwd.path(), &["--plugin-dir", d, "plugins", "--json"], &[]).success();
    assert!(out.stdout.contains("\"centre-prior\""), "{}", out.stdout);
    let out = sat(cwd.path(), &["plugins"], &[("SAT_PLUGIN_PATH", d)]).success();
    assert!(
        out.stdout
            .lines()
            .any(|l| l.starts_with("centre-prior") && l.contains("saliency")),
        "{}",
        out.stdout
    );
    // Without it, the component is not there.
    let out = sat(cwd.path(), &["plugins"], &[]).success();
    assert!(!out.stdout.contains("centre-prior"));
}

#[test]
fn config_plugin_paths_are_relative_to_the_config_file() {
    let cwd = tempfile::tempdir().unwrap();
    let dir = plugin_dir(&["centre_prior"]);
    let nested = cwd.path().join("cfg");
    std::fs::create_dir(&nested).unwrap();
    std::fs::rename(
        dir.path().join("libcentre_prior.so"),
        nested.join("libcentre_prior.so"),
    )
    .unwrap();
    let cfg = write(&nested, "c.toml", "name = \"viaconfig\"\n[plugins]\npaths = [\"libcentre_prior.so\"]\n[train]\nsaliency = [\"centre-prior\"]\nattack = \"sat\"\n");
    let out = sat_tests::tiny_run(cwd.path(), &["--config", &cfg], &[]).success();
    assert!(
        out.stderr.contains("saliency from centre-prior"),
        "{}",
        out.stderr
    );
    assert!(cwd.path().join("runs/viaconfig/metrics.json").exists());
}

#[test]
fn missing_plugin_path_is_an_error() {
    let cwd = tempfile::tempdir().unwrap();
    sat(
        cwd.path(),
        &["--plugin-dir", "/nonexistent/plugins", "plugins"],
        &[],
    )
    .fails_with(&["/nonexistent/plugins", "no such file or directory"]);
    sat(
        cwd.path(),
        &["plugins"],
        &[("SAT_PLUGIN_PATH", "/nonexistent/libx.so")],
    )
    .fails_with(&["/nonexistent/libx.so"]);
}

#[test]
fn a_file_that_is_not_a_plugin_is_refused_by_name() {
    let cwd = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "libjunk.so", "this is not an ELF file");
    let d = dir.path().to_str().unwrap();
    sat(cwd.path(), &["--plugin-dir", d, "plugins"], &[])
        .fails_with(&["libjunk.so", "is not a sat plugin library"]);
    // A real shared library without sat's root module.
    let dir2 = tempfile::tempdir().unwrap();
    let libm = [
        "/lib/x86_64-linux-gnu/libm.so.6",
        "/usr/lib/x86_64-linux-gnu/libm.so.6",
        "/lib64/libm.so.6",
    ]
    .into_iter()
    .find(|p| std::path::Path::new(p).exists())
    .expect("libm present");
    std::fs::copy(libm, dir2.path().join("libm.so")).unwrap();
    sat(
        cwd.path(),
        &["--plugin-dir", dir2.path().to_str().unwrap(), "plugins"],
        &[],
    )
    .fails_with(&["libm.so", "is not a sat plugin library"]);
}

#[test]
fn another_libtorch_is_refused_naming_both_versions() {
    let cwd = tempfile::tempdir().unwrap();
    let dir = plugin_dir(&["sat_fixture_foreign_libtorch"]);
    sat(
        cwd.path(),
        &["--plugin-dir", dir.path().to_str().unwrap(), "plugins"],
        &[],
    )
    .fails_with(&[
        "libsat_fixture_foreign_libtorch.so",
        "libtorch 1.13.1",
        "libtorch 2.13.0",
        "rebuild the plugin",
    ]);
}

#[test]
fn another_abi_is_refused() {
    let cwd = tempfile::tempdir().unwrap();
    let dir = plugin_dir(&["sat_fixture_other_abi"]);
    sat(
        cwd.path(),
        &["--plugin-dir", dir.path().to_str().unwrap(), "plugins"],
        &[],
    )
    .fails_with(&[
        "libsat_fixture_other_abi.so",
        "incompatible sat plugin ABI",
        "sat-core 0.2.0",
    ]);
}

#[test]
fn duplicate_component_names_name_both_files() {
    let cwd = tempfile::tempdir().unwrap();
    let dir = plugin_dir(&["sat_plugin_attacks"]);
    let err = sat(
        cwd.path(),
        &["--plugin-dir", dir.path().to_str().unwrap(), "plugins"],
        &[],
    )
    .fails_with(&["is provided twice"]);
    let standard = library("sat_plugin_attacks").canonicalize().unwrap();
    assert!(err.contains(standard.to_str().unwrap()), "{err}");
    assert!(
        err.contains(dir.path().canonicalize().unwrap().to_str().unwrap()),
        "{err}"
    );
}

#[test]
fn world_writable_plugin_dirs_need_explicit_consent() {
    use std::os::unix::fs::PermissionsExt;
    let cwd = tempfile::tempdir().unwrap();
    let dir = plugin_dir(&["centre_prior"]);
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let d = dir.path().to_str().unwrap();
    sat(cwd.path(), &["--plugin-dir", d, "plugins"], &[])
        .fails_with(&["world-writable", "--allow-insecure-plugins"]);
    sat(
        cwd.path(),
        &["--plugin-dir", d, "--allow-insecure-plugins", "plugins"],
        &[],
    )
    .success();
}
