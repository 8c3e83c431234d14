"""The kernel side of the JAX entry points' custom shell messages.

``jax_load_request``, ``jax_transform_request`` and ``jax_program_request`` arrive on the
shell channel like ``execute_request``; :class:`JaxRequests` (a part of ``JaxKernel``)
checks their fields here, in the kernel, so bad input gets a one-line error without a round
trip, forwards them to the worker as the wire requests of the same kind, and rebuilds the
reply field by field from what the (untrusted) worker sent, within a size limit.

It also carries out what only the kernel can do: replace the worker when JAX must start
with settings the running one cannot take.
"""

from __future__ import annotations

import base64
import json
import typing as t

from ..policy.accelerators import LeaseError
from ..protocol import jaxspec, state, wire
from ..protocol.schema import error_line
from ..supervision.manager import WorkerDied, WorkerError
from .outputs import Origin, OutputPublisher
from .replies import MalformedReply, restored_text
from .replies import require as _require
from .subshells import on_loop


class JaxRequests:
    """Serves the jax_*_request shell messages for the kernel, and a cell's request for a new worker."""

    def __init__(
        self,
        manager: t.Any,
        session: t.Any,
        publisher: OutputPublisher,
        log: t.Any,
        reply_limit: int,
        max_program_bytes: int,
    ) -> None:
        self.manager = manager
        self.session = session
        self.publisher = publisher
        self.log = log
        self.jax_reply_limit = reply_limit
        self.max_program_bytes = max_program_bytes

    def register(self, shell_handlers: dict[str, t.Any]) -> None:
        """Add the custom messages to ipykernel's shell dispatch table (busy/idle come with it)."""
        for kind in wire.JAX_REQUESTS:
            shell_handlers[f"{kind}_request"] = self.jax_request

    async def jax_request(self, stream: t.Any, ident: t.Any, parent: dict[str, t.Any]) -> None:
        """Validate a jax_*_request, have the worker serve it, and send back the checked reply.

        Registered in ``shell_handlers``, so ipykernel's dispatch publishes busy/idle around it
        as for any shell request; outputs the worker prints go out under this request.
        """
        kind = parent["header"]["msg_type"].removesuffix("_request")
        origin = self.publisher.begin(Origin(parent, ident))
        try:
            fields = _jax_request_fields(kind, parent.get("content"))
            if kind == "jax_program":
                fields["max_bytes"] = self.max_program_bytes
                b64 = fields.get("program_base64")
                if b64 is not None and len(b64) * 3 // 4 > self.max_program_bytes:
                    raise jaxspec.JaxSpecError(
                        f"program is about {len(b64) * 3 // 4:,} bytes, over the "
                        f"{self.max_program_bytes:,}-byte limit (JaxKernel.max_program_bytes)"
                    )
        except jaxspec.JaxSpecError as e:
            reply = _jax_error("JaxRequestError", str(e))
        else:
            fields[wire.PARENT_FIELD] = origin.for_worker()
            try:
                # From a subshell's thread too: the worker's wire belongs to the shell's loop.
                reply = await on_loop(self._serve_jax(kind, fields, origin), self.manager.loop)
            except Exception as e:  # noqa: BLE001 - a request must always get a reply, or the client hangs
                self.log.exception("Failed to serve %s_request", kind)
                reply = _jax_error("KernelError", f"the kernel failed to serve {kind}_request: {e!r}")
        self.session.send(stream, f"{kind}_reply", reply, parent, ident)

    async def _serve_jax(self, kind: str, fields: dict[str, t.Any], origin: Origin) -> dict[str, t.Any]:
        try:
            content = await self.manager.request(kind, fields, origin=origin)
            if kind == "jax_load" and content.get("status") == "restart":
                settings = jaxspec.check_load_settings(content.get("settings") or {})
                self.manager.reserve_for(settings)  # a refused lease leaves the worker as it is
                warning = self._warn_replacing(content, origin)
                reply = await self._load_in_new_worker(settings, origin)
                reply.update(worker_replaced=True, warning=warning)
                return reply
            return self._checked_jax_reply(kind, content)
        except WorkerDied as e:
            kept = await self._restored()
            return _jax_error(
                "WorkerDied",
                f"{e.subject} {e.how} while serving {kind}_request. {kept or e.fresh + '; all variables were lost.'}",
            )
        except (WorkerError, jaxspec.JaxSpecError) as e:
            return _jax_error(type(e).__name__, f"The worker could not serve {kind}_request: {e}")
        except LeaseError as e:
            return _jax_error("DeviceLeaseError", f"{e}. The worker was kept as it was.")

    def _warn_replacing(
        self, content: dict[str, t.Any], origin: Origin, in_cell: bool = False, keep: bool = False
    ) -> str:
        given = content.get("reason")
        reason = given if isinstance(given, str) else "new JAX settings"
        rest = " Code after it in this cell did not run." if in_cell else ""
        if keep:
            warning = f"{reason[:1000]}. Replacing the worker; the variables saved just now come back.{rest}"
        else:
            warning = (
                f"{reason[:1000]}. Replacing the worker to apply them: all variables are lost.{rest} "
                "(Put %load_jax / load_jax_library first in a notebook to avoid this, or add --keep-state.)"
            )
        self.publisher.problem(warning, origin)
        return warning

    async def replace_for_cell(
        self, restart: dict[str, t.Any], reply: dict[str, t.Any], origin: Origin
    ) -> dict[str, t.Any]:
        """A cell's load_jax_library needs a new worker: warn, replace it, load JAX there, show the result."""
        try:
            settings = jaxspec.check_load_settings(restart.get("settings") or {})
        except jaxspec.JaxSpecError as e:
            raise MalformedReply(f"bad jax_restart settings from the worker: {e}") from None
        try:
            self.manager.reserve_for(settings)
        except (LeaseError, jaxspec.JaxSpecError) as e:
            if isinstance(e, LeaseError):
                error = _jax_error("DeviceLeaseError", f"{e}. The worker was kept as it was.")
            else:
                error = _jax_error("JaxLoadError", str(e))
            error = {k: error[k] for k in ("ename", "evalue", "traceback")}
            self.publisher.publish("error", error, origin)
            return {**reply, "status": "error", **error}
        keep = restart.get("keep_state") is True
        self._warn_replacing(restart, origin, in_cell=True, keep=keep)
        content = await self._load_in_new_worker(settings, origin, keep)
        if keep:
            await self._report_kept(restart, origin)
        if content["status"] == "ok":
            data = {"data": content["data"], "metadata": {}, "transient": {}}
            self.publisher.publish("display_data", data, origin)
            return reply
        error = {k: content[k] for k in ("ename", "evalue", "traceback")}
        self.publisher.publish("error", error, origin)
        return {**reply, "status": "error", **error}

    async def _restored(self) -> str | None:
        """After a worker died: what its replacement restored (see replies.restored_text)."""
        m = self.manager
        report = await on_loop(m.state.restore_report(m.start_timeout), m.loop)
        return restored_text(report, (report or {}).get("cell") or 0)

    async def _report_kept(self, restart: dict[str, t.Any], origin: Origin) -> None:
        """What the new worker restored, and (``%jax_reset``) the device memory it freed."""
        report = await self.manager.state.restore_report(self.manager.start_timeout)
        if report is not None and report.get("refused"):
            self.publisher.problem(f"{report['refused']}: the variables are lost.", origin)
            return
        if report is None or report.get("cell") is None:
            self.publisher.problem("No snapshot was restored: the variables are lost.", origin)
            return
        text = restored_text(report, int(report["cell"])) or ""
        text = text.replace("A fresh worker restored", "Restored", 1)
        before = state.device_memory(restart.get("memory"))
        if restart.get("memory") is not None:
            after = report["memory"]
            text += " Device memory in use: " + _before_after(before["in_use"], after["in_use"], state.sized)
            text += (
                "; live JAX buffers: "
                + _before_after(before["live_buffers"], after["live_buffers"], str)
                + "."
            )
        data = {"text/plain": text}
        self.publisher.publish("display_data", {"data": data, "metadata": {}, "transient": {}}, origin)

    async def _load_in_new_worker(
        self, settings: dict[str, t.Any], origin: Origin, keep_state: bool = False
    ) -> dict[str, t.Any]:
        """Replace the worker with one started with ``settings`` and load JAX there.

        If JAX cannot start that way (a platform that is not there), later workers go back to
        the settings that worked, so a crash restart does not fail the same way.
        """
        previous = dict(self.manager.jax_overrides)
        try:
            await self.manager.replace(settings, keep_state=keep_state)
            reply = self._checked_jax_reply(
                "jax_load", await self.manager.request("jax_load", {"settings": settings}, origin=origin)
            )
        except BaseException:
            self.manager.jax_overrides = previous  # e.g. the new worker did not start
            raise
        if reply["status"] != "ok":
            self.manager.jax_overrides = previous
        return reply

    def _checked_jax_reply(self, kind: str, content: dict[str, t.Any]) -> dict[str, t.Any]:
        """Keep only the fields a jax_*_reply may have, of the right types, within the size limit."""
        status = content.get("status")
        if status == "error":
            return _jax_error(
                _require(content, "ename", str)[:200],
                _require(content, "evalue", str)[:4000],
                [s for s in _require(content, "traceback", list) if isinstance(s, str)][-50:],
            )
        if status != "ok":
            raise MalformedReply(f"{kind} reply has no valid status")
        data = _require(content, "data", dict)
        if not all(isinstance(v, str) for k, v in data.items() if k.startswith("text/")):
            raise MalformedReply("text/* entries of the result bundle must be strings")
        reply: dict[str, t.Any] = {"status": "ok", "data": data, "metadata": {}}
        if kind == "jax_load":
            reply["info"] = _require(content, "info", dict)
        else:
            reply["reports"] = _require(content, "reports", dict)
        size = len(json.dumps(reply))
        if size > self.jax_reply_limit:
            return _jax_error(
                "ReplyTooLarge",
                f"the {kind}_reply would be {size:,} bytes, over JaxKernel.jax_reply_limit "
                f"({self.jax_reply_limit:,}); lower options.max_values or ask for fewer reports",
            )
        return reply


def _before_after(before: int | None, after: int | None, show: t.Callable[[int], str]) -> str:
    if before is None or after is None:
        return "not measured on this backend"
    return f"{show(before)} before, {show(after)} after"


def _jax_error(ename: str, evalue: str, traceback: list[str] | None = None) -> dict[str, t.Any]:
    return {
        "status": "error",
        "ename": ename,
        "evalue": evalue,
        "traceback": traceback if traceback is not None else [error_line(ename, evalue)],
    }


def _jax_request_fields(kind: str, content: t.Any) -> dict[str, t.Any]:
    """The fields of a jax_*_request, checked here so bad input never reaches the worker."""
    if not isinstance(content, dict):
        raise jaxspec.JaxSpecError(f"{kind}_request content must be an object")
    if kind == "jax_load":
        known = set(jaxspec.LOAD_SETTINGS)
        unknown = sorted(set(content) - known)
        if unknown:
            raise jaxspec.JaxSpecError(
                f"unknown {kind}_request field(s) {', '.join(unknown)}; known: {', '.join(jaxspec.LOAD_SETTINGS)}"
            )
        return {"settings": jaxspec.check_load_settings(content)}
    if kind == "jax_transform":
        known = {"transformation", "function", "args", "options"}
        unknown = sorted(set(content) - known)
        if unknown:
            raise jaxspec.JaxSpecError(
                f"unknown {kind}_request field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        jaxspec.parse_transformation(content.get("transformation"))  # type: ignore[arg-type]  # it checks
        return {
            "transformation": content["transformation"],
            "function": jaxspec.check_function(content.get("function")),  # type: ignore[arg-type]
            "args": jaxspec.check_args(content.get("args")),
            "options": jaxspec.check_options(
                content.get("options"), jaxspec.TRANSFORM_OPTIONS, "transformation"
            ),
        }
    known = {"program", "program_base64", "args", "options"}
    unknown = sorted(set(content) - known)
    if unknown:
        raise jaxspec.JaxSpecError(
            f"unknown {kind}_request field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )
    program, b64 = content.get("program"), content.get("program_base64")
    if (program is None) == (b64 is None):
        raise jaxspec.JaxSpecError(
            "give exactly one of 'program' (a path in the worker) and 'program_base64'"
        )
    if program is not None and (not isinstance(program, str) or not program):
        raise jaxspec.JaxSpecError("'program' must be a path (a non-empty string)")
    if b64 is not None:
        if not isinstance(b64, str):
            raise jaxspec.JaxSpecError("'program_base64' must be a base64 string")
        try:
            base64.b64decode(b64, validate=True)
        except ValueError:
            raise jaxspec.JaxSpecError("'program_base64' is not valid base64") from None
    fields: dict[str, t.Any] = {
        "args": jaxspec.check_args(content.get("args")),
        "options": jaxspec.check_options(content.get("options"), jaxspec.PROGRAM_OPTIONS, "program"),
    }
    fields["program" if program is not None else "program_base64"] = program if program is not None else b64
    return fields
