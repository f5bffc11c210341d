"""Errors the user sees as one line: each class carries a message template.

Callers raise `BridgeNotFound(bridge="br0")`; the CLI prints `str(error)` and
exits with `error.exit_code`, with a traceback only under --debug. Every
exception class of the package lives here, and every exit status it can end
with is in EXIT_CODES, from which the CLI's help is made (the README and the
man page are checked against it by the tests).
"""

from typing import Any, ClassVar

EXIT_CODES = {
    0: "success",
    1: "failure (a command or the switch refused something)",
    2: "bad usage, or a snapshot that is damaged, foreign or missing",
    3: "Open vSwitch unreachable",
    4: "a restore failed; the snapshot is kept for `ovs-service restore`",
    5: "a systemd job failed, or systemd is unreachable",
    6: "another transaction holds the lock",
    7: "a snapshot of a newer schema than this ovs-service reads; nothing was changed",
    130: "interrupted",
}
INTERRUPTED = 130


class OvsServiceError(Exception):
    """Base of every error ovs-service reports to its user."""

    template: ClassVar[str] = "{message}"
    exit_code: ClassVar[int] = 1

    def __init__(self, **fields: Any) -> None:
        self.fields = fields
        super().__init__(self.template.format(**fields))


class CommandFailed(OvsServiceError):
    template = "{command} failed (exit {returncode}): {stderr}"


class CommandNotFound(OvsServiceError):
    template = "{command}: not found; is it installed?"


class OvsUnreachable(OvsServiceError):
    template = "cannot reach {what}: {reason}"
    exit_code = 3


class OvsdbRefused(OvsServiceError):
    template = "ovsdb-server refused {what}: {reason}"


class NotApplied(OvsServiceError):
    """A database write that was made, but that ovs-vswitchd has not acted on."""

    template = "{what} written, but ovs-vswitchd has not applied it: {reason}"


class BridgeNotFound(OvsServiceError):
    template = "bridge {bridge!r} does not exist"


class UnsupportedProtocols(OvsServiceError):
    template = "bridge {bridge!r}: no usable OpenFlow version in protocols {protocols}"


class OpenFlowError(OvsServiceError):
    template = "{bridge}: {message}"


class SwitchGone(OpenFlowError):
    """The switch went away mid-conversation (it crashed or was stopped)."""


class RestoreFailed(OvsServiceError):
    template = "restore of bridge {bridge!r} failed: {reason}"
    exit_code = 4


class SnapshotInvalid(OvsServiceError):
    template = "snapshot {path}: {reason}"
    exit_code = 2


class SnapshotWriteFailed(OvsServiceError):
    template = "cannot write a snapshot in {path}: {reason}; nothing was changed"


class SnapshotTooNew(SnapshotInvalid):
    """A snapshot whose schema is newer than this version's and not declared
    readable by it (see store.manifest): refused before anything is touched."""

    template = ("snapshot {path}: schema {schema} is newer than this ovs-service reads "
                "(up to {known}; readers need schema {compatible} or later), "
                "nothing was changed: upgrade ovs-service to restore it")
    exit_code = 7


class UnsafeDirectory(OvsServiceError):
    """A directory ovs-service would write in that someone else could change:
    they could swap a name in it for a link to where they cannot write."""

    template = "refusing to write in {path}: {reason}"
    exit_code = 2


class SnapshotNotFound(OvsServiceError):
    template = "no snapshot {what}"
    exit_code = 2


class UsageError(OvsServiceError):
    exit_code = 2


class Busy(OvsServiceError):
    template = "another ovs-service transaction holds the lock ({holder}); retry, or use --wait"
    exit_code = 6


class SwitchRefusesSnapshot(RestoreFailed):
    """A snapshot of a newer Open vSwitch that the switch does not take whole:
    found by checking every bridge before any is touched."""

    template = ("restore refused, nothing was changed: bridge {bridge!r}: Open vSwitch "
                "{running} does not take what {saved} saved: {reason}")


class RestorePartsFailed(OvsServiceError):
    """Every bridge came back, but a part restored beside them did not."""

    template = "restore of {parts} failed: {reason}"
    exit_code = 4


class SystemdError(OvsServiceError):
    template = "systemd: {message}"
    exit_code = 5


class JobFailed(OvsServiceError):
    template = "systemd job {action} {unit} ended with {result!r}; see: journalctl -u {unit}"
    exit_code = 5


class ModuleError(OvsServiceError):
    template = "kernel module {module}: {reason}"


class InterfacesError(OvsServiceError):
    template = "interfaces: {reason}"


class NetlinkRequestFailed(OvsServiceError):
    """One netlink request of the interfaces stage failed; the stage reports it
    (by errno name) and goes on."""

    template = "{message}"

    @property
    def errno_name(self) -> str:
        """e.g. "ENODEV"; "" when the failure carried no errno."""
        return str(self.fields["errno_name"])

    @property
    def message(self) -> str:
        return str(self.fields["message"])


class FirewallError(OvsServiceError):
    template = "firewall: {reason}"


class DatapathNetlinkError(OvsServiceError):
    template = "kernel datapath: {request}: {reason}"


class SaveIncomplete(OvsServiceError):
    """Some bridges could not be saved; the snapshot of the others was written."""

    template = ("bridge {bridge!r} was not saved: {reason}{more}; "
                "snapshot {path} holds the other bridges")

    @property
    def snapshot(self) -> Any:
        """The snapshot written without the failed bridges (a `store.Snapshot`)."""
        return self.fields["snapshot"]


# Transactions: failures the CLI reports after putting the switch back.


class InjectedFault(OvsServiceError):
    """Tests only (OVS_SERVICE_FAULT=fail:STEP): a step that fails as a real one can."""

    template = "step {step} failed (injected by OVS_SERVICE_FAULT)"


class PrecheckFailed(OvsServiceError):
    template = "{op} not started, nothing was changed: {reason}"


class RolledForward(OvsServiceError):
    template = "{op} failed at {step}: {reason}; {after}"
