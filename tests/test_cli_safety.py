"""What the ``kmsenv`` command refuses to do, run as a user runs it against a real
LocalKms: follow a symbolic link it was not asked to (in an input tree), write
through one (in an output tree), replace one (an output path), write a tree into
itself, or print a crafted message's text raw to the terminal.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from kmsenv.arn import Arn
from kmsenv.exceptions import ConfigurationError

from kms_fixtures import cli_env  # noqa: F401  (fixture)

# Reaches no crypto backend, or only through code the backend tests cover: the pure-backend CI pass leaves it out.
pytestmark = pytest.mark.backend_independent

SECRET = b"-----BEGIN OPENSSH PRIVATE KEY----- not for the output tree"
# Characters a terminal acts on: ESC (C0), CSI (C1), DEL and a bidi override.
RAW_CONTROLS = (b"\x1b", b"\xc2\x9b", b"\x7f", "\u202e".encode())


@pytest.fixture(scope="module")
def kms_env(cli_env):  # noqa: F811
    return cli_env


def kmsenv(*args: str, env=None, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "kmsenv", *args], input=stdin, capture_output=True, env=env, timeout=120, check=False
    )


def files_under(root) -> list[str]:
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, names in os.walk(root) for f in names)


def symlink_warnings(stderr: bytes) -> list[str]:
    return [line for line in stderr.decode().splitlines() if "warning: skipping symbolic link" in line]


def make_tree(tmp_path):
    """tree/{a.txt, sub/b.txt, id_rsa -> ../outside/id_rsa, linked -> ../outside/dir}."""
    outside = tmp_path / "outside"
    (outside / "dir").mkdir(parents=True)
    (outside / "id_rsa").write_bytes(SECRET)
    (outside / "dir" / "c.txt").write_bytes(SECRET + b" (in a linked directory)")
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "a.txt").write_bytes(b"a" * 1000)
    (tree / "sub" / "b.txt").write_bytes(b"b" * 1000)
    (tree / "id_rsa").symlink_to(outside / "id_rsa")
    (tree / "linked").symlink_to(outside / "dir", target_is_directory=True)
    return tree, outside


# ---------------------------------------------------------------- input tree


def test_links_in_the_input_tree_are_skipped_with_one_warning_each(kms_env, tmp_path):
    _, arns, env = kms_env
    tree, _ = make_tree(tmp_path)
    # A link whose name would rewrite the terminal: the warning shows it escaped.
    (tree / "evil\x1b[2J").symlink_to(tmp_path / "outside" / "id_rsa")
    enc, dec = tmp_path / "enc", tmp_path / "dec"
    out = kmsenv("encrypt", "-k", arns[0], "-r", "-i", str(tree), "-o", str(enc), env=env)
    assert out.returncode == 0, out.stderr
    assert files_under(enc) == ["a.txt.kmsenv", os.path.join("sub", "b.txt.kmsenv")]
    warnings = symlink_warnings(out.stderr)
    assert len(warnings) == 3 and len(out.stderr.decode().splitlines()) == 3
    assert any(w.endswith(f"{tree / 'id_rsa'} (pass --follow-symlinks to follow links)") for w in warnings)
    assert any(str(tree / "linked") in w for w in warnings)
    assert b"\x1b" not in out.stderr and b"evil\\x1b[2J" in out.stderr
    out = kmsenv("decrypt", "--discovery", "-r", "-i", str(enc), "-o", str(dec), env=env)
    assert out.returncode == 0, out.stderr
    assert files_under(dec) == ["a.txt", os.path.join("sub", "b.txt")]
    assert all(SECRET not in (dec / name).read_bytes() for name in files_under(dec))


def test_follow_symlinks_includes_linked_files_and_directories(kms_env, tmp_path):
    _, arns, env = kms_env
    tree, outside = make_tree(tmp_path)
    enc, dec = tmp_path / "enc", tmp_path / "dec"
    out = kmsenv("encrypt", "-k", arns[0], "-r", "--follow-symlinks", "-i", str(tree), "-o", str(enc), env=env)
    assert out.returncode == 0, out.stderr
    assert out.stderr == b""
    assert files_under(enc) == [
        "a.txt.kmsenv",
        "id_rsa.kmsenv",
        os.path.join("linked", "c.txt.kmsenv"),
        os.path.join("sub", "b.txt.kmsenv"),
    ]
    out = kmsenv("decrypt", "--discovery", "-r", "-i", str(enc), "-o", str(dec), env=env)
    assert out.returncode == 0, out.stderr
    assert (dec / "id_rsa").read_bytes() == SECRET
    assert (dec / "linked" / "c.txt").read_bytes() == (outside / "dir" / "c.txt").read_bytes()
    assert not (dec / "linked").is_symlink()  # the output tree has real directories


def test_follow_symlinks_refuses_loops_and_the_output_directory(kms_env, tmp_path):
    _, arns, env = kms_env
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "b.txt").write_bytes(b"b")
    (tree / "sub" / "loop").symlink_to(tree, target_is_directory=True)  # back to an ancestor
    enc = tmp_path / "enc"
    enc.mkdir()
    (tree / "to_output").symlink_to(enc, target_is_directory=True)  # into the output tree
    out = kmsenv("encrypt", "-k", arns[0], "-r", "--follow-symlinks", "-i", str(tree), "-o", str(enc), env=env)
    assert out.returncode == 1, out.stderr
    errors = out.stderr.decode().splitlines()
    assert len(errors) == 2
    assert "symbolic link loop" in errors[0] and str(tree / "sub" / "loop") in errors[0]
    assert "leads into the output directory" in errors[1]
    assert files_under(enc) == [os.path.join("sub", "b.txt.kmsenv")]  # the rest was done, once


def test_output_inside_the_input_through_a_link_is_refused(kms_env, tmp_path):
    _, arns, env = kms_env
    tree, _ = make_tree(tmp_path)
    alias = tmp_path / "alias"
    alias.symlink_to(tree / "sub", target_is_directory=True)
    before = files_under(tree)
    for out_dir in (alias / "enc", alias):  # a path through a link, and a link itself
        out = kmsenv("encrypt", "-k", arns[0], "-r", "-i", str(tree), "-o", str(out_dir), env=env)
        assert out.returncode == 2, out.stderr
        assert b"must not be inside the input directory" in out.stderr
    assert files_under(tree) == before


# ---------------------------------------------------------------- output tree


@pytest.mark.parametrize("direction", ["encrypt", "decrypt"])
def test_nothing_is_written_through_links_planted_in_the_output_tree(kms_env, tmp_path, direction):
    _, arns, env = kms_env
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "a.txt").write_bytes(b"a" * 1000)
    (tree / "sub" / "b.txt").write_bytes(b"b" * 1000)
    (tree / "c.txt").write_bytes(b"c" * 1000)
    if direction == "decrypt":
        enc = tmp_path / "enc"
        assert kmsenv("encrypt", "-k", arns[0], "-r", "-i", str(tree), "-o", str(enc), env=env).returncode == 0
        src, names = enc, {"a": "a.txt", "sub": "sub", "c": "c.txt"}
        args = ["decrypt", "-k", arns[0]]
    else:
        src, names = tree, {"a": "a.txt.kmsenv", "sub": "sub", "c": "c.txt.kmsenv"}
        args = ["encrypt", "-k", arns[0]]
    victim_dir = tmp_path / "victim_dir"
    victim_dir.mkdir()
    victim = tmp_path / "victim"
    victim.write_bytes(b"the link's target")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / names["sub"]).symlink_to(victim_dir, target_is_directory=True)  # a directory on the way
    (out_dir / names["c"]).symlink_to(victim)  # the output file itself
    out = kmsenv(*args, "-r", "-i", str(src), "-o", str(out_dir), env=env)
    assert out.returncode == 1, out.stderr
    assert list(victim_dir.iterdir()) == []  # nothing written outside the tree
    assert victim.read_bytes() == b"the link's target"
    assert (out_dir / names["c"]).is_symlink() and (out_dir / names["sub"]).is_symlink()  # links left alone
    errors = out.stderr.decode().splitlines()
    assert len(errors) == 2 and all("symbolic link" in line for line in errors)
    assert (out_dir / names["a"]).is_file()  # the other files were done
    assert not [p for p in out_dir.rglob("*.partial")]


def test_single_file_follows_a_named_input_link_but_never_replaces_an_output_link(kms_env, tmp_path):
    _, arns, env = kms_env
    data = tmp_path / "data"
    data.write_bytes(b"payload")
    named = tmp_path / "named-link"
    named.symlink_to(data)
    enc = tmp_path / "data.kmsenv"
    out = kmsenv("encrypt", "-k", arns[0], "-i", str(named), "-o", str(enc), env=env)
    assert out.returncode == 0, out.stderr  # the user named the link: it is followed
    target = tmp_path / "target"
    target.write_bytes(b"keep me")
    link = tmp_path / "out-link"
    link.symlink_to(target)
    out = kmsenv("decrypt", "-k", arns[0], "-i", str(enc), "-o", str(link), env=env)
    assert out.returncode == 2
    assert b"is a symbolic link" in out.stderr
    assert link.is_symlink() and target.read_bytes() == b"keep me"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]


# ---------------------------------------------------------------- text from a message


def _crafted(message: bytes, arn: str, bad: str) -> bytes:
    """``message`` with the key ID's tail replaced by ``bad`` (same UTF-8 length,
    so every length field still holds)."""
    raw, bad_raw = arn.encode(), bad.encode()
    crafted = raw[: -len(bad_raw)] + bad_raw
    assert message.count(raw) == 1
    return message.replace(raw, crafted)


def test_arn_parse_rejects_control_characters():
    good = "acs:kms:cn-hangzhou:1234567890:key/key-abc"
    assert str(Arn.parse(good)) == good
    for bad in ("\x1b[2J", "\x9b", "\x7f", "\u202e", "\u2066", "\x00", "\u200b"):
        with pytest.raises(ConfigurationError, match=r"control character U\+") as info:
            Arn.parse(good + bad)
        assert bad not in str(info.value)  # the error shows it escaped
        with pytest.raises(ConfigurationError, match="control character"):
            Arn("cn-hangzhou", "1234567890", "key-abc" + bad)


@pytest.mark.parametrize("fmt", ["framed", "alibaba-stream"])
def test_stream_headers_with_a_control_character_in_an_arn_are_refused(kms_env, tmp_path, fmt):
    _, arns, env = kms_env
    enc = kmsenv("encrypt", "-k", arns[0], "--format", fmt, "-i", "-", "-o", "-", env=env, stdin=b"x" * 100)
    assert enc.returncode == 0, enc.stderr
    crafted = tmp_path / "crafted"
    crafted.write_bytes(_crafted(enc.stdout, arns[0], "\x1b[2J"))
    for args in (["inspect", str(crafted)], ["decrypt", "--discovery", "-i", str(crafted), "-o", str(tmp_path / "o")]):
        out = kmsenv(*args, env=env)
        assert out.returncode == 4, out.stderr
        assert b"control character U+001B" in out.stderr
        assert b"\x1b" not in out.stderr + out.stdout
    assert not (tmp_path / "o").exists()


def test_text_from_a_message_is_printed_escaped(kms_env, tmp_path):
    """A DER message with controls in its context: inspect escapes them in
    valid JSON, and decrypt's errors and log lines never print them raw. An
    ARN with a control character is refused by the DER parser too (as by the
    stream parsers), its error printed escaped."""
    _, arns, env = kms_env
    context = "note=left\u202eright\x7fend\x9b"
    enc = kmsenv(
        "encrypt",
        "-k",
        arns[0],
        "-k",
        arns[1],
        "--format",
        "alibaba",
        "-c",
        context,
        "-i",
        "-",
        "-o",
        "-",
        env=env,
        stdin=b"x" * 100,
    )
    assert enc.returncode == 0, enc.stderr
    plain = tmp_path / "plain.der"
    plain.write_bytes(enc.stdout)
    out = kmsenv("inspect", str(plain), env=env)
    assert out.returncode == 0, out.stderr
    assert not any(c in out.stdout for c in RAW_CONTROLS)
    assert b"\\u202e" in out.stdout and b"\\u007f" in out.stdout and b"\\u009b" in out.stdout
    assert json.loads(out.stdout)["encryption_context"] == {"note": "left\u202eright\x7fend\x9b"}

    crafted = tmp_path / "crafted.der"
    crafted.write_bytes(_crafted(enc.stdout, arns[0], "\x9b"))  # a C1 CSI, two UTF-8 bytes
    for args in (["inspect", str(crafted)], ["decrypt", "--discovery", "-i", str(crafted), "-o", str(tmp_path / "o")]):
        out = kmsenv(*args, env=env)
        assert out.returncode == 4, out.stderr
        assert b"control character U+009B" in out.stderr
        assert not any(c in out.stderr + out.stdout for c in RAW_CONTROLS), out.stderr
    # Discovery with the context's controls: errors and log lines stay escaped.
    bad_env = dict(env, ALIBABA_CLOUD_ACCESS_KEY_SECRET="wrong")
    out = kmsenv("decrypt", "--discovery", "-i", str(plain), "-o", str(tmp_path / "o"), env=bad_env)
    assert out.returncode in (3, 4), out.stderr
    assert not any(c in out.stderr for c in RAW_CONTROLS), out.stderr
    assert not (tmp_path / "o").exists()


def test_library_log_warnings_are_printed_escaped():
    """The provider's warning when a CMK fails quotes the ARN and KMS's error text;
    the CLI prints it escaped (Python's last-resort handler printed it raw)."""
    code = (
        "import logging\n"
        "from kmsenv import cli\n"
        "with cli._escaped_log_warnings():\n"
        "    logging.getLogger('kmsenv').warning('under %s failed', 'key/\\x1b[2J\\u202e')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stderr == b"under key/\\x1b[2J\\u202e failed\n"
