"""A small, injection-safe wrapper around the `adb` command on the PATH.

Every host command is an argument list run without a shell, so a serial, a
path or a file name reaches `adb` as one argument whatever it contains. A
command for the device shell (`adb shell`) is a list too: each element is
quoted with `shlex.quote` and the quoted words are joined into the one string
that `adb` hands to the device's `sh`, which therefore sees exactly the same
list of arguments (spaces, quotes, semicolons, `$(...)` stay literal).

Errors are `AdbError` subclasses (an `OSError`: something outside the program,
not a bad value) whose message says what is wrong and what to do about it.
Whatever adb or the device prints reaches a message (and `getprop` values
reach the caller) only through `printable`: terminal escape sequences
removed, then `tf_bignas.common.text.clean` (no ESC, NUL or other control
character), on one line.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Sequence

from tf_bignas.common.text import clean

# Substrings of adb's own error messages that mean the device went away.
_GONE_MARKERS = (
    "not found",
    "no devices",
    "device offline",
    "device unauthorized",
    "error: closed",
    "protocol fault",
    "connection reset",
    "device still authorizing",
    "device is not connected",
)
# A terminal control sequence (colours, cursor moves): ESC [ parameters final-byte.
_ESCAPE_SEQUENCE = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]")
INSTALL_HINT = (
    "install the Android platform tools (Debian/Ubuntu: sudo apt-get install adb; "
    "elsewhere: https://developer.android.com/tools/releases/platform-tools) and put adb on the PATH"
)


class AdbError(OSError):
    """Something went wrong talking to adb or to the device."""


class AdbNotFoundError(AdbError):
    """`adb` is not on the PATH."""


class NoDeviceError(AdbError):
    """No device is attached, or the requested serial is not attached."""


class DeviceSelectionError(AdbError):
    """Several devices are attached and no serial was given."""


class DeviceStateError(AdbError):
    """The device is attached but unusable (unauthorized, offline, ...)."""


class DeviceDisconnectedError(AdbError):
    """The device stopped answering in the middle of the work."""


@dataclasses.dataclass(frozen=True)
class DeviceEntry:
    """One line of `adb devices`.

    Attributes:
        serial: The device serial.
        state: "device" (usable), "unauthorized", "offline", "recovery", ...
    """

    serial: str
    state: str


def find_adb() -> str:
    """The path of `adb` on the PATH.

    Returns:
        The executable's path.

    Raises:
        AdbNotFoundError: If there is none.
    """
    path = shutil.which("adb")
    if path is None:
        raise AdbNotFoundError(f"adb is not installed or not on the PATH; {INSTALL_HINT}")
    return path


def parse_devices(text: str) -> list[DeviceEntry]:
    """Parses the output of `adb devices`.

    Args:
        text: Its standard output.

    Returns:
        The listed devices, in order.
    """
    entries = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("*") or line.startswith("List of devices"):
            continue
        parts = line.split("\t") if "\t" in line else line.split()
        if len(parts) >= 2:
            entries.append(DeviceEntry(parts[0].strip(), parts[1].strip().split()[0]))
    return entries


def printable(text: str) -> str:
    """Device or adb output as one printable line: escape sequences and control characters gone.

    Args:
        text: The raw output.

    Returns:
        The text without terminal escape sequences (``ESC[31m``), without any
        other control character (`tf_bignas.common.text.clean`), on one line.
    """
    return clean(_ESCAPE_SEQUENCE.sub("", text), one_line=True)


def _said(out: subprocess.CompletedProcess) -> str:
    """What a command printed on failure (stderr, else stdout), on one printable line."""
    return printable(out.stderr or out.stdout or "")


def _state_advice(serial: str, state: str) -> str:
    if state == "unauthorized":
        return (
            f"device {serial!r} is unauthorized: unlock it and accept the 'Allow USB debugging' "
            "prompt (or revoke USB debugging authorisations in Developer options and reconnect)"
        )
    if state == "offline":
        return (
            f"device {serial!r} is offline: reconnect the cable, or run 'adb kill-server' and "
            "plug it in again"
        )
    return f"device {serial!r} is in state {state!r}; it must be 'device' (booted, authorised)"


def quote_command(argv: Sequence[str]) -> str:
    """One device-shell command line that `sh` splits back into exactly `argv`.

    Args:
        argv: The program and its arguments.

    Returns:
        The quoted command line.

    Raises:
        ValueError: If `argv` is empty or an argument holds a NUL or newline.
    """
    if not argv:
        raise ValueError("empty device command")
    for a in argv:
        if "\0" in a or "\n" in a or "\r" in a:
            raise ValueError(f"device command argument {a!r} holds a NUL or line break")
    return " ".join(shlex.quote(str(a)) for a in argv)


class Adb:
    """Runs adb commands against one device.

    Args:
        serial: The device serial (`adb -s`); None picks the only attached device.
        executable: The adb program (default: `adb` on the PATH).
        timeout: Seconds before any one adb command is abandoned.
    """

    def __init__(
        self, serial: str | None = None, executable: str | None = None, timeout: float = 900.0
    ):
        self.executable = executable or find_adb()
        self.timeout = timeout
        self.serial = self._select(serial)

    def _run_host(
        self, args: Sequence[str], timeout: float | None = None
    ) -> subprocess.CompletedProcess:
        try:
            return subprocess.run(
                [self.executable, *args],
                capture_output=True,
                text=True,
                errors="replace",
                timeout=timeout or self.timeout,
                check=False,
            )
        except FileNotFoundError as e:
            raise AdbNotFoundError(f"cannot run {self.executable!r}: {e}; {INSTALL_HINT}") from e

    def devices(self) -> list[DeviceEntry]:
        """The attached devices (`adb devices`).

        Raises:
            AdbError: If adb itself fails (its server cannot start, ...).
        """
        out = self._run_host(["devices"], timeout=60)
        if out.returncode != 0:
            raise AdbError(f"'adb devices' failed: {_said(out)}")
        return parse_devices(out.stdout)

    def _select(self, serial: str | None) -> str:
        entries = self.devices()
        if serial is not None and not serial:
            raise ValueError("the device serial is empty; pass one from 'adb devices'")
        if not entries:
            raise NoDeviceError(
                "no Android device is attached ('adb devices' lists none): connect one by USB "
                "with USB debugging on (Settings > Developer options), or 'adb connect HOST:PORT'"
            )
        listing = printable(", ".join(f"{e.serial} ({e.state})" for e in entries))
        if serial is None:
            if len(entries) > 1:
                raise DeviceSelectionError(
                    f"{len(entries)} devices are attached ({listing}); choose one with --serial"
                )
            entry = entries[0]
        else:
            matches = [e for e in entries if e.serial == serial]
            if not matches:
                raise NoDeviceError(f"device {serial!r} is not attached; attached: {listing}")
            entry = matches[0]
        if entry.state != "device":
            raise DeviceStateError(_state_advice(entry.serial, entry.state))
        return entry.serial

    def run(self, args: Sequence[str], timeout: float | None = None) -> subprocess.CompletedProcess:
        """Runs `adb -s SERIAL ARGS...` (no shell on the host).

        Args:
            args: adb arguments (e.g. ["push", local, remote]).
            timeout: Seconds (default: the instance's timeout).

        Returns:
            The finished process (text output).

        Raises:
            DeviceDisconnectedError: If the device no longer answers.
            AdbError: If the command times out while the device is still there.
        """
        try:
            out = self._run_host(["-s", self.serial, *args], timeout)
        except subprocess.TimeoutExpired as e:
            self.ensure_connected()
            raise AdbError(
                f"adb {args[0]} on {self.serial!r} timed out after {e.timeout:.0f} s"
            ) from e
        if out.returncode != 0 and self._looks_gone(out):
            self.ensure_connected()
        return out

    @staticmethod
    def _looks_gone(out: subprocess.CompletedProcess) -> bool:
        text = (out.stderr or "").lower() + "\n" + (out.stdout or "")[-400:].lower()
        return any(marker in text for marker in _GONE_MARKERS)

    def ensure_connected(self) -> None:
        """Checks that the device still answers.

        Raises:
            DeviceDisconnectedError: If it does not.
        """
        try:
            out = self._run_host(["-s", self.serial, "get-state"], timeout=30)
        except subprocess.TimeoutExpired as e:
            raise DeviceDisconnectedError(f"device {self.serial!r} stopped answering") from e
        state = out.stdout.strip()
        if out.returncode != 0 or state != "device":
            detail = _said(out) or f"state {state!r}"
            raise DeviceDisconnectedError(f"device {self.serial!r} disconnected ({detail})")

    def shell(
        self, argv: Sequence[str], timeout: float | None = None
    ) -> subprocess.CompletedProcess:
        """Runs one command in the device shell, every argument quoted.

        Args:
            argv: The program and its arguments, as a list.
            timeout: Seconds.

        Returns:
            The finished process (the device command's exit status and output).
        """
        return self.run(["shell", quote_command(argv)], timeout)

    def check_shell(self, argv: Sequence[str], what: str) -> str:
        """`shell`, raising on a non-zero exit status.

        Args:
            argv: The command.
            what: What the command does, for the error message.

        Returns:
            Its standard output.

        Raises:
            AdbError: If it fails.
        """
        out = self.shell(argv)
        if out.returncode != 0:
            raise AdbError(f"could not {what} on {self.serial!r}: {_said(out)}")
        return out.stdout

    def push(self, local: str, remote: str) -> None:
        """Copies a host file to the device.

        Raises:
            FileNotFoundError: If the local file is missing.
            AdbError: If the copy fails.
        """
        if not os.path.isfile(local):
            raise FileNotFoundError(f"{local!r} does not exist")
        out = self.run(["push", local, remote])
        if out.returncode != 0:
            raise AdbError(
                f"could not push {local!r} to {remote!r} on {self.serial!r}: {_said(out)}"
            )

    def getprop(self, name: str) -> str:
        """A system property of the device ("" when it is not set), without control characters.

        Args:
            name: The property, e.g. "ro.product.model".

        Returns:
            Its value on one line.

        Raises:
            AdbError: If it cannot be read.
        """
        return printable(self.check_shell(["getprop", name], f"read {name}"))
