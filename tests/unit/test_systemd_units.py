"""The unit files in ``systemd/``: the keys the daemon relies on, the hardening, and
``systemd-analyze verify`` when it is installed."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNITS = Path(__file__).resolve().parents[2] / "systemd"
Unit = dict[str, dict[str, list[str]]]

HARDENING = {
    "ProtectSystem": ["strict"], "ProtectHome": ["yes"], "PrivateTmp": ["yes"],
    "PrivateDevices": ["yes"], "NoNewPrivileges": ["yes"], "ProtectKernelTunables": ["yes"],
    "ProtectKernelModules": ["yes"], "ProtectKernelLogs": ["yes"],
    "ProtectControlGroups": ["yes"], "DynamicUser": ["yes"], "User": ["retentiond"],
    "RestrictAddressFamilies": ["AF_UNIX AF_INET AF_INET6"],
    "SystemCallFilter": ["@system-service", "~@privileged @resources"],
    "StateDirectory": ["retentiond"], "ReadWritePaths": ["/var/lib/retentiond"],
    "LoadCredential": ["secret.key:/etc/retentiond/secret.key"],
    "CapabilityBoundingSet": [""],
}


def parse_unit(text: str) -> Unit:
    """systemd's syntax: sections, ``Key=value`` (repeatable), ``#``/``;`` comments, and
    backslash continuation lines."""
    unit: Unit = {}
    section: dict[str, list[str]] | None = None
    pending = ""
    for raw in text.splitlines():
        line = pending + raw.strip()
        pending = ""
        if not line or line[0] in "#;":
            continue
        if line.endswith("\\"):
            pending = line[:-1].rstrip() + " "
            continue
        if line.startswith("[") and line.endswith("]"):
            section = unit.setdefault(line[1:-1], {})
            continue
        assert section is not None, f"key outside a section: {line}"
        key, sep, value = line.partition("=")
        assert sep, f"not a Key=value line: {line}"
        section.setdefault(key.strip(), []).append(value.strip())
    return unit


def load(name: str) -> Unit:
    return parse_unit((UNITS / name).read_text())


def test_parser_reads_repeated_keys_and_continuations() -> None:
    unit = parse_unit("# c\n[Service]\nA=1\nA=2\nB=x \\\n  y\n; c\n[Install]\nC=\n")
    assert unit == {"Service": {"A": ["1", "2"], "B": ["x y"]}, "Install": {"C": [""]}}


def test_daemon_unit_is_a_notify_service_with_watchdog_and_reload() -> None:
    service = load("retentiond.service")["Service"]
    assert service["Type"] == ["notify"]
    assert service["NotifyAccess"] == ["main"]
    assert service["WatchdogSec"] == ["60s"]
    assert service["Restart"] == ["on-failure"]
    assert service["RestartPreventExitStatus"] == ["2"]
    assert service["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert service["ExecStart"] == [
        "/usr/local/bin/retentiond --config /etc/retentiond/retentiond.yaml serve"]
    assert load("retentiond.service")["Install"] == {"WantedBy": ["multi-user.target"]}


@pytest.mark.parametrize("name", ["retentiond.service", "retentiond-run.service"])
def test_units_are_hardened(name: str) -> None:
    service = load(name)["Service"]
    assert {k: service.get(k) for k in HARDENING} == HARDENING
    assert service["EnvironmentFile"] == ["-/etc/retentiond/retentiond.env"]


def test_one_shot_alternative_runs_a_sweep_daily() -> None:
    run = load("retentiond-run.service")
    assert run["Service"]["Type"] == ["oneshot"]
    assert run["Service"]["ExecStart"] == [
        "/usr/local/bin/retentiond --config /etc/retentiond/retentiond.yaml run"]
    assert "Install" not in run  # started by the timer, never enabled on its own
    timer = load("retentiond-run.timer")
    assert timer["Timer"] == {"OnCalendar": ["*-*-* 03:00:00"], "Persistent": ["yes"],
                              "RandomizedDelaySec": ["5min"],
                              "Unit": ["retentiond-run.service"]}
    assert timer["Install"] == {"WantedBy": ["timers.target"]}


def _verify(tmp_path: Path, extra: str = "") -> subprocess.CompletedProcess[str]:
    """``systemd-analyze verify`` on copies whose ExecStart names this installation's
    retentiond (verify checks that the binary exists)."""
    exe = Path(sys.executable).parent / "retentiond"
    assert exe.is_file(), exe
    paths = []
    for unit in sorted(UNITS.iterdir()):
        text = unit.read_text().replace("/usr/local/bin/retentiond", str(exe))
        if unit.name == "retentiond.service":
            text += extra
        (tmp_path / unit.name).write_text(text)
        paths.append(str(tmp_path / unit.name))
    return subprocess.run(["systemd-analyze", "verify", *paths], capture_output=True,
                          text=True, check=False, timeout=60, cwd=tmp_path)


needs_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                   reason="systemd-analyze is not installed")


@needs_analyze
def test_systemd_analyze_verify_is_clean(tmp_path: Path) -> None:
    result = _verify(tmp_path)
    assert (result.returncode, result.stderr) == (0, "")


@needs_analyze
def test_systemd_analyze_verify_reports_a_bad_key(tmp_path: Path) -> None:
    result = _verify(tmp_path, extra="[Service]\nProtectHome=maybe\n")
    assert "Failed to parse protect home value, ignoring: maybe" in result.stderr
