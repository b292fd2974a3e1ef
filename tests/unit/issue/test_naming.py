"""Where a certificate's outputs go in the shared outbox (certdrop.issue.naming): a free
name, the first free NAME-N when NAME is another holder's, the same holder's files to
replace; judged by the files and the index, with real certificates of a real CA."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from certdrop.index import outputs as delivered
from certdrop.issue.naming import OutputNames, Placement, replaced_path
from conftest import ec_csr
from issue_kit import Kit, make_kit


@pytest.fixture
def kit(tmp_path: Path) -> Iterator[Kit]:
    k = make_kit(tmp_path)
    try:
        yield k
    finally:
        k.close()


def names(kit: Kit) -> OutputNames:
    return kit.recorder.names


def place(
    kit: Kit, wanted: str, subject: str, owner: str, taken: set[str] | None = None
) -> Placement:
    with kit.store.begin() as conn:
        return names(kit).place(conn, wanted, subject, owner, taken or set())


def issued(kit: Kit, name: str, cn: str) -> tuple[str, str, str]:
    """Issue a certificate for NAME.req (CN `cn`): its serial, subject and owner."""
    res = kit.process(name, ec_csr(cn)[0])
    assert res.serial is not None
    rec = kit.cert(res.serial)
    return rec.serial, rec.subject, rec.owner


def test_a_free_name_is_taken_as_it_is(kit: Kit) -> None:
    assert place(kit, "alice", "CN=Alice", "root") == Placement("alice")
    # names given to other certificates of the same batch are not free
    assert place(kit, "alice", "CN=Alice", "root", {"alice", "alice-2"}).name == "alice-3"


def test_another_holders_files_are_never_replaced(kit: Kit) -> None:
    _serial, subject, owner = issued(kit, "client", "First Holder")
    assert place(kit, "client", "CN=Second Holder", owner).name == "client-2"
    assert place(kit, "client", subject, "someone-else").name == "client-2"  # another user
    issued(kit, "client", "Second Holder")  # delivered as client-2
    assert (kit.env.outbox / "client-2.cer").exists()
    assert place(kit, "client", "CN=Third Holder", owner).name == "client-3"


def test_the_same_holder_takes_the_name_over(kit: Kit) -> None:
    serial, subject, owner = issued(kit, "bob", "Bob Again")
    got = place(kit, "bob", subject, owner)
    assert got == Placement("bob", ((serial, "cer", kit.env.outbox / "bob.cer"),))


def test_files_nobody_knows_are_another_holders(kit: Kit) -> None:
    (kit.env.outbox / "carol.p12").write_bytes(b"a bundle certdrop did not record")
    assert place(kit, "carol", "CN=Carol", "root").name == "carol-2"
    (kit.env.outbox / "dave.cer").write_text("not a certificate")
    assert place(kit, "dave", "CN=Dave", "root").name == "dave-2"


def test_a_cer_delivered_before_outputs_were_recorded_is_read(kit: Kit) -> None:
    serial, subject, owner = issued(kit, "erin", "Erin Old")
    with kit.store.begin() as conn:  # as an index of an older certdrop: no outputs rows
        delivered.moved(conn, serial, "cer", "/elsewhere", kit.clock.now())
    got = place(kit, "erin", subject, owner)
    assert got == Placement("erin", ((serial, "cer", kit.env.outbox / "erin.cer"),))
    assert place(kit, "erin", "CN=Not Erin", owner).name == "erin-2"


def test_a_password_file_of_a_certificate_never_committed_is_free(kit: Kit) -> None:
    passwords = kit.env.state / "passwords"
    passwords.mkdir(exist_ok=True)
    orphan = passwords / "frank.txt"
    orphan.write_text(
        "pw\nThe line above is the PKCS#12 password of outbox/frank.p12 "
        "(certificate serial 0ABCDEF0).\n"
    )
    assert place(kit, "frank", "CN=Frank", "root") == Placement("frank")
    orphan.write_text("pw\nno serial named here\n")
    assert place(kit, "frank", "CN=Frank", "root").name == "frank-2"


def test_long_names_leave_room_for_the_number(kit: Kit) -> None:
    wanted = "x" * 128
    (kit.env.outbox / f"{wanted}.cer").write_text("someone's")
    got = place(kit, wanted, "CN=X", "root").name
    assert got == "x" * 126 + "-2" and len(got) == 128


def test_replaced_files_are_named_after_what_replaced_them(tmp_path: Path) -> None:
    assert (
        replaced_path(tmp_path, Path("/o/alice.p12"), "0A") == tmp_path / "alice.p12.replaced-by-0A"
    )
