"""The benchmark suite runs end to end (tiny sizes; no timing is asserted)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from conftest import REPO


def _quick_bench(out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`bench/run --quick` with tiny sizes and `args`, its JSON in `out`; must succeed."""
    res = subprocess.run(
        [
            str(REPO / "bench" / "run"),
            "--quick",
            "--n",
            "5",
            "--peer-seconds",
            "1",
            "--no-install",
            "--json",
            str(out),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    return res


def test_bench_quick_run_prints_the_table(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    res = _quick_bench(
        out,
        "--only",
        "folder-burst-ec-lint-off",
        "--tools",
        "certdrop,openssl-x509,ceiling",
        "--drop",
        "copy",
    )
    lines = res.stdout.splitlines()
    header = next(line for line in lines if line.startswith("workload"))
    for column in ("certdrop", "openssl x509 -req", "cryptography ceiling", "target"):
        assert column in header
    row = next(line for line in lines if line.startswith("folder burst 5 CSRs, EC P-256 CA"))
    assert "ERR" not in row, res.stdout
    doc = json.loads(out.read_text())
    [data] = doc["rows"]
    assert data["id"] == "folder-burst-ec-lint-off"
    # every tool asked for produced a figure (certificates were issued and verified)
    for tool in ("certdrop", "openssl-x509", "ceiling"):
        assert data["cells"][tool]["value"] > 0, data["cells"][tool]
    assert data["details"]["certdrop"]["n"] == 5
    assert "openssl-x509" in data["advantage"]


def test_bench_burst_into_a_filled_index(tmp_path: Path) -> None:
    """The burst into an index that already holds certificates, beside openssl ca with an
    index.txt of as many lines (tiny sizes); run twice (--bursts)."""
    out = tmp_path / "bench.json"
    _quick_bench(
        out,
        "--only",
        "folder-burst-ec-lint-off-100k",
        "--index-n",
        "300",
        "--tools",
        "certdrop,openssl-ca",
        "--bursts",
        "2",
    )
    doc = json.loads(out.read_text())
    [data] = doc["rows"]
    assert data["id"] == "folder-burst-ec-lint-off-300"
    assert data["details"]["certdrop"]["n"] == 5
    for tool in ("certdrop", "openssl-ca"):
        assert data["cells"][tool]["value"] > 0, data["cells"][tool]
    assert "index.txt of 300 lines" in data["cells"]["openssl-ca"]["note"]
    # two bursts, each into its own filled index; the cell is the lower of the two
    certdrop = data["details"]["certdrop"]
    assert len(certdrop["runs_per_second"]) == 2
    assert len(certdrop["runs_cpu_seconds"]) == 2
    assert abs(data["cells"]["certdrop"]["value"] - min(certdrop["runs_per_second"])) < 0.1
    assert data["cells"]["certdrop"]["note"].startswith("300 valid certificates first; median of 2")


def test_bench_burst_into_a_full_outbox(tmp_path: Path) -> None:
    """The burst into an outbox that already holds files, alternating with the burst into
    an empty one (tiny sizes, two pairs)."""
    out = tmp_path / "bench.json"
    _quick_bench(
        out,
        "--only",
        "folder-burst-ec-lint-off-outbox",
        "--outbox-n",
        "400",
        "--tools",
        "certdrop",
        "--bursts",
        "2",
    )
    doc = json.loads(out.read_text())
    [row] = doc["rows"]
    assert row["id"] == "folder-burst-ec-lint-off-outbox"
    assert "certdrop" in row["details"], row["cells"]
    details = row["details"]["certdrop"]
    assert details["outbox_n"] == 400
    assert len(details["full_per_second"]) == len(details["empty_per_second"]) == 2
    assert abs(row["cells"]["certdrop"]["value"] - min(details["full_per_second"])) < 0.1
    assert row["cells"]["certdrop"]["note"].startswith("400 files in outbox/ first; 2 bursts each")
    assert abs(row["target_value"] - 0.9 * min(details["empty_per_second"])) < 0.1


def test_bench_serve_rows_beside_openssl_ocsp(tmp_path: Path) -> None:
    """The certdrop serve rows: OCSP answered by certdrop serve and by `openssl ocsp -port`
    on the same certificates (every answer checked for its nonce, every 50th for its
    status), the HTTP layer alone beside them, GET /crl.der, idle CPU and memory, the load
    generator's CPU beside them."""
    out = tmp_path / "bench.json"
    _quick_bench(
        out,
        "--only",
        "serve",
        "--tools",
        "certdrop,openssl-ocsp,http-ceiling",
        "--serve-seconds",
        "0.5",
        "--idle-seconds",
        "0.5",
    )
    rows = {r["id"]: r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"ocsp", "ocsp-p99", "crl-http", "serve-idle-cpu", "serve-memory"}
    for tool in ("certdrop", "openssl-ocsp"):
        cell = rows["ocsp"]["cells"][tool]
        assert cell["value"] > 0 and not cell["error"], cell
        assert rows["ocsp"]["details"][tool]["errors"] == 0
        assert "load generator" in cell["note"]
        assert rows["ocsp-p99"]["cells"][tool]["value"] > 0
    assert rows["ocsp"]["details"]["certdrop"]["pair_ratios"]
    assert "openssl ocsp" in rows["ocsp"]["target"]
    ceiling = rows["ocsp"]["cells"]["http-ceiling"]
    assert ceiling["value"] > 0 and "a constant body, no OCSP work: x" in ceiling["note"]
    assert rows["crl-http"]["cells"]["certdrop"]["value"] > 0
    assert rows["serve-memory"]["details"]["certdrop"]["processes"] == 3
    assert rows["serve-idle-cpu"]["cells"]["certdrop"]["value"] is not None


def test_bench_burst_with_the_index_on_postgresql(tmp_path: Path) -> None:
    """The burst through a daemon on a PostgreSQL index (a server the bench starts),
    alternating with the burst on SQLite (tiny sizes, two pairs)."""
    out = tmp_path / "bench.json"
    _quick_bench(
        out,
        "--only",
        "folder-burst-ec-lint-off-postgresql",
        "--tools",
        "certdrop",
        "--bursts",
        "2",
    )
    doc = json.loads(out.read_text())
    [row] = doc["rows"]
    assert row["id"] == "folder-burst-ec-lint-off-postgresql"
    assert "certdrop" in row["details"], row["cells"]
    details = row["details"]["certdrop"]
    assert len(details["postgresql_per_second"]) == len(details["sqlite_per_second"]) == 2
    assert abs(row["cells"]["certdrop"]["value"] - min(details["postgresql_per_second"])) < 0.1
    assert row["cells"]["certdrop"]["note"].startswith("2 bursts each on PostgreSQL")
    assert abs(row["target_value"] - 0.75 * min(details["sqlite_per_second"])) < 0.1


def test_bench_burst_into_one_spool_shared_by_two_hosts(tmp_path: Path) -> None:
    """Two daemons on one spool and one PostgreSQL database against one daemon (tiny
    sizes, two pairs): both rates and the first host's share are recorded."""
    out = tmp_path / "bench.json"
    _quick_bench(
        out,
        "--only",
        "folder-burst-ec-lint-off-two-hosts",
        "--tools",
        "certdrop",
        "--bursts",
        "2",
    )
    doc = json.loads(out.read_text())
    [row] = doc["rows"]
    assert row["id"] == "folder-burst-ec-lint-off-two-hosts"
    assert "certdrop" in row["details"], row["cells"]
    details = row["details"]["certdrop"]
    assert len(details["two_hosts_per_second"]) == len(details["one_host_per_second"]) == 2
    assert all(0.0 <= share <= 1.0 for share in details["first_host_share"])
    assert abs(row["cells"]["certdrop"]["value"] - min(details["two_hosts_per_second"])) < 0.1
    assert row["cells"]["certdrop"]["note"].startswith("2 bursts each through two daemons")
    assert abs(row["target_value"] - min(details["one_host_per_second"])) < 0.1


def test_bench_big_index_rows_on_both_backends(tmp_path: Path) -> None:
    """The index-1m rows (tiny: 2,000 certificates) on SQLite and PostgreSQL: a burst
    pair, start-up, `list --expiring 30` and the CRL from each backend's loaded index."""
    out = tmp_path / "bench.json"
    _quick_bench(out, "--only", "index-1m", "--tools", "certdrop", "--big-index-n", "2000")
    doc = json.loads(out.read_text())
    ids = [row["id"] for row in doc["rows"]]
    assert ids == [
        f"{kind}-2000-{backend}"
        for backend in ("sqlite", "postgresql")
        for kind in ("folder-burst-ec-lint-off", "startup", "list-expiring-30", "crl")
    ]
    for row in doc["rows"]:
        cell = row["cells"]["certdrop"]
        assert cell["error"] == "" and cell["value"] > 0, row
        full = row["details"]["certdrop"]["full"]
        assert len(full["rate"]) == len(full["crl_seconds"]) == len(full["list_seconds"]) == 1
        if row["id"].startswith("list-expiring-30"):
            # 1,500 valid certificates ending over a year: ~30/365 of them, and a header
            lines = int(cell["note"].split("; ")[1].split()[0].replace(",", ""))
            assert 100 < lines < 150, cell["note"]
