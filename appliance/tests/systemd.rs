//! The systemd units in the repository (`appliance/systemd/rialto@.service`
//! and the state directories' mount it requires, `dev-shm-rialto.mount`) as
//! systemd reads them: `systemd-analyze verify`, pointed at this build's
//! binary. (Its readiness and upgrade protocol is tested live in
//! `balance.rs`: `sigusr2_upgrades_in_place_and_tells_the_service_manager`.)

use std::{path::Path, process::Command};

const BIN: &str = env!("CARGO_BIN_EXE_rialto");

#[test]
fn the_units_pass_systemd_analyze_verify() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/rialto@.service");
    let unit = std::fs::read_to_string(&path).unwrap();
    for line in [
        "Type=notify",
        "NotifyAccess=all",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "ExecStart=/usr/local/bin/rialto run --iface %i --config /etc/rialto/%i.toml",
        "RequiresMountsFor=/dev/shm/rialto",
    ] {
        assert!(unit.lines().any(|l| l == line), "the unit says {line:?}");
    }
    let mount = std::fs::read_to_string(path.with_file_name("dev-shm-rialto.mount")).unwrap();
    for line in [
        "Where=/dev/shm/rialto",
        "Type=tmpfs",
        "Options=mode=0700,huge=within_size,nosuid,nodev,noexec",
    ] {
        assert!(mount.lines().any(|l| l == line), "the mount says {line:?}");
    }
    let dir = std::env::temp_dir().join(format!("rialto-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("rialto@.service"),
        unit.replace("/usr/local/bin/rialto", BIN),
    )
    .unwrap();
    std::fs::write(dir.join("dev-shm-rialto.mount"), mount).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(dir.join("rialto@eth1.service"))
        .arg(dir.join("dev-shm-rialto.mount"))
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run systemd-analyze ({e}): setup.sh installs it (package systemd)")
        });
    std::fs::remove_dir_all(&dir).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !stderr.contains("rialto"),
        "systemd-analyze verify: {}\n{stderr}",
        out.status
    );
}
