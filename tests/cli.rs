//! The host CLI as a user runs it (unit tier: no root needed).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic with context

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn sitelink(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sitelink"))
        .args(args)
        .current_dir(repo())
        .output()
        .expect("run sitelink")
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let d = std::env::temp_dir().join(format!("sitelink-cli-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        TempDir(d)
    }
    fn path(&self, p: &str) -> PathBuf {
        self.0.join(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn mode(p: &Path) -> u32 {
    fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn validate_seed_mesh_prints_a_summary() {
    let out = sitelink(&["validate", "configs/seed-mesh.toml"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("4 sites, 6 tunnels"), "{stdout}");
    assert!(
        stdout.contains("(behind NAT)") && stdout.contains("192.168.10.0/24"),
        "{stdout}"
    );
    assert!(stdout.lines().count() < 25, "summary fits one screen");
}

#[test]
fn unknown_key_on_line_1_exits_2_with_its_place() {
    let tmp = TempDir::new("unknown");
    let copy = tmp.path("net.toml");
    let seed = fs::read_to_string(repo().join("configs/seed-mesh.toml")).unwrap();
    fs::write(&copy, format!("colour = \"red\"\n{seed}")).unwrap();
    let out = sitelink(&["validate", copy.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    let first = stderr.lines().next().unwrap();
    assert_eq!(
        first.split(": ").take(2).collect::<Vec<_>>(),
        [format!("{}:1:1", copy.display()), "colour".to_string()]
    );
    assert!(first.contains("unknown key `colour`"), "{stderr}");
    assert!(out.stdout.is_empty());
}

#[test]
fn missing_file_is_a_clear_error() {
    let out = sitelink(&["validate", "/nonexistent/net.toml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("cannot read /nonexistent/net.toml"));
}

#[test]
fn keys_init_writes_private_keys_0600_and_keeps_them() {
    let tmp = TempDir::new("keys");
    let dir = tmp.path("keys");
    let out = sitelink(&[
        "keys",
        "init",
        "configs/seed-mesh.toml",
        "--out",
        dir.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(mode(&dir), 0o700);
    let mut before = Vec::new();
    for site in ["aws", "gcp", "azure", "office"] {
        let key = dir.join(format!("{site}.key"));
        assert_eq!(mode(&key), 0o600, "{}", key.display());
        let secret = fs::read_to_string(&key).unwrap();
        assert!(
            !text(&out.stdout).contains(secret.trim()),
            "keys init must not print private keys"
        );
        before.push(secret);
    }

    // Again: every key kept. Rotating one replaces only that one.
    let out = sitelink(&[
        "keys",
        "init",
        "configs/seed-mesh.toml",
        "--out",
        dir.to_str().unwrap(),
        "--rotate",
        "gcp",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let after: Vec<String> = ["aws", "gcp", "azure", "office"]
        .iter()
        .map(|s| fs::read_to_string(dir.join(format!("{s}.key"))).unwrap())
        .collect();
    assert_eq!(after[0], before[0]);
    assert_ne!(after[1], before[1]);
    assert_eq!(after[2..], before[2..]);

    let out = sitelink(&[
        "keys",
        "init",
        "configs/seed-mesh.toml",
        "--out",
        dir.to_str().unwrap(),
        "--rotate",
        "gpc",
    ]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "an unknown site is an input error"
    );
    assert!(text(&out.stderr).contains("no such site"));

    // A group-readable key is refused, and nothing changes.
    fs::set_permissions(dir.join("aws.key"), fs::Permissions::from_mode(0o644)).unwrap();
    let out = sitelink(&[
        "keys",
        "init",
        "configs/seed-mesh.toml",
        "--out",
        dir.to_str().unwrap(),
        "--rotate",
        "aws",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("chmod 600"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(fs::read_to_string(dir.join("aws.key")).unwrap(), after[0]);
}

#[test]
fn render_office_shows_its_three_tunnels_and_no_private_key() {
    let tmp = TempDir::new("render");
    let dir = tmp.path("keys");
    assert!(sitelink(&[
        "keys",
        "init",
        "configs/seed-mesh.toml",
        "--out",
        dir.to_str().unwrap()
    ])
    .status
    .success());
    let out = sitelink(&[
        "render",
        "configs/seed-mesh.toml",
        "--site",
        "office",
        "--keys",
        dir.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let cfg = text(&out.stdout);
    for iface in ["wg-aws", "wg-gcp", "wg-azure"] {
        assert!(cfg.contains(&format!("name = \"{iface}\"")), "{cfg}");
    }
    assert!(!cfg.contains("wg-office"));
    assert!(!cfg.to_lowercase().contains("private"), "{cfg}");
    for site in ["aws", "gcp", "azure", "office"] {
        let secret = fs::read_to_string(dir.join(format!("{site}.key"))).unwrap();
        assert!(!cfg.contains(secret.trim()));
    }
}

#[test]
fn render_without_keys_says_how_to_get_them() {
    let out = sitelink(&["render", "configs/seed-mesh.toml", "--site", "aws"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("no public key for site") && stderr.contains("--keys"),
        "{stderr}"
    );
    let out = sitelink(&[
        "render",
        "configs/seed-mesh.toml",
        "--site",
        "nope",
        "--keys",
        "configs/golden/keys",
    ]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "an unknown site is an input error"
    );
    assert!(text(&out.stderr).contains("no site \"nope\""));
}

#[test]
fn import_wg_reads_wg_quick_files_and_writes_keys_only_when_all_are_valid() {
    let tmp = TempDir::new("import");
    let private = "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=";
    let peer = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=";
    let good = tmp.path("office.conf");
    fs::write(
        &good,
        format!("[Interface]\nPrivateKey = {private}\nAddress = 10.9.0.1/24\nListenPort = 51820   # office\n\n[Peer]\nPublicKey = {peer}\nAllowedIPs = 10.1.0.0/24 , fd00:1::/64\nEndpoint = [2001:db8:5::1]:51820\nPersistentKeepalive = 25"),
    )
    .unwrap();
    let bad = tmp.path("bad.conf");
    fs::write(&bad, format!("[Interface]\nPrivateKey = {private}\n\n[Peer]\nPublicKey = {peer}\nAllowedIPs = 10.2.0.0/24\nBogus = 1\n")).unwrap();
    let keys = tmp.path("keys");

    // One bad file: exit 2, the line and key named, no key material echoed, nothing written.
    let out = sitelink(&[
        "import-wg",
        good.to_str().unwrap(),
        bad.to_str().unwrap(),
        "--keys-out",
        keys.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&format!("{}:7:", bad.display())) && stderr.contains("Bogus"),
        "{stderr}"
    );
    assert!(!stderr.contains(private) && !text(&out.stdout).contains(private));
    assert!(
        !keys.exists(),
        "nothing may be written when any file is invalid"
    );

    let out = sitelink(&[
        "import-wg",
        good.to_str().unwrap(),
        "--keys-out",
        keys.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("name = \"office\"") && stdout.contains("listen_port = 51820"),
        "{stdout}"
    );
    assert!(
        stdout.contains("\"10.1.0.0/24\", \"fd00:1::/64\"")
            && stdout.contains("[2001:db8:5::1]:51820"),
        "{stdout}"
    );
    assert!(!stdout.contains(private));
    assert_eq!(mode(&keys.join("office.key")), 0o600);
    assert_eq!(
        fs::read_to_string(keys.join("office.key")).unwrap().trim(),
        private
    );
}

#[test]
fn text_that_is_not_utf8_is_an_input_error_with_its_place() {
    let tmp = TempDir::new("utf8");
    let file = tmp.path("net.toml");
    fs::write(&file, b"name = \"x\"\nbad = \"\xff\"\n").unwrap();
    let out = sitelink(&["validate", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).starts_with(&format!("{}:2:8: not UTF-8", file.display())),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn import_wg_never_overwrites_a_key_nor_writes_into_an_open_directory() {
    let tmp = TempDir::new("import-keys");
    let conf = tmp.path("wg0.conf");
    fs::write(
        &conf,
        "[Interface]\nPrivateKey = yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=\n",
    )
    .unwrap();
    let open_dir = tmp.path("open");
    fs::create_dir(&open_dir).unwrap();
    fs::set_permissions(&open_dir, fs::Permissions::from_mode(0o755)).unwrap();
    let out = sitelink(&[
        "import-wg",
        conf.to_str().unwrap(),
        "--keys-out",
        open_dir.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("chmod 700"),
        "{}",
        text(&out.stderr)
    );
    assert!(!open_dir.join("wg0.key").exists());

    let dir = tmp.path("keys");
    fs::create_dir(&dir).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
    let other = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=\n";
    fs::write(dir.join("wg0.key"), other).unwrap();
    let out = sitelink(&[
        "import-wg",
        conf.to_str().unwrap(),
        "--keys-out",
        dir.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("already holds another key"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(fs::read_to_string(dir.join("wg0.key")).unwrap(), other);
}
