"""The migrations ship inside the wheel: build it, install it in a fresh venv, `db upgrade`."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_wheel_carries_migrations_and_upgrades(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(dist), str(ROOT)], check=True, cwd=tmp_path)
    wheel = next(dist.glob("retentiond-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "retentiond/_migrations/env.py" in names
    assert "retentiond/_migrations/versions/0001_initial.py" in names

    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", str(wheel)], check=True)
    # The dependencies come from the test's own environment through a .pth file; the
    # retentiond package itself only from the wheel (no source tree on the path).
    purelib = "import sysconfig;print(sysconfig.get_paths()['purelib'])"
    site = subprocess.run([str(py), "-c", purelib],
                          check=True, capture_output=True, text=True).stdout.strip()
    Path(site, "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    key = tmp_path / "secret.key"
    key.write_text("k" * 64)
    key.chmod(0o600)
    config = tmp_path / "retentiond.yaml"
    config.write_text(f"version: 1\nstate: sqlite:///{tmp_path / 'state.db'}\n"
                      f"secret_key: {{file: {key}}}\nstores: {{}}\n")
    where = subprocess.run([str(py), "-c", "import retentiond;print(retentiond.__file__)"],
                           check=True, capture_output=True, text=True, cwd=tmp_path).stdout
    assert where.startswith(str(env_dir)), where
    out = subprocess.run([str(env_dir / "bin" / "retentiond"), "--config", str(config), "db",
                          "upgrade"], capture_output=True, text=True, cwd=tmp_path, check=False)
    assert out.returncode == 0, out.stderr
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'state.db'}")
    with engine.connect() as conn:
        head = conn.execute(sa.text("select version_num from alembic_version")).scalar_one()
        tables = set(sa.inspect(conn).get_table_names())
    assert head in out.stdout
    assert {"runs", "ledger", "ledger_head", "checkpoints", "pending"} <= tables
