"""The ``jax`` kernelspec: where its files live and ``python -m jax_kernel install``.

``pip install`` already registers the spec (the wheel ships ``kernelspec/`` as shared
data in ``share/jupyter/kernels/jax``, as ipykernel does for ``python3``); this command
installs it elsewhere (``--user``, ``--sys-prefix``, ``--prefix``) with ``argv[0]``
pinned to this interpreter, so the kernel runs in this environment wherever it is listed.

The spec names our kernel provisioner (instant restarts), and jupyter_client hides a spec whose
provisioner the *server's* Python cannot import.  A spec installed for the user or under a
prefix may be read by a Jupyter server from another environment, so there it leaves the
provisioner out unless asked (``--provisioner``); in this environment's own prefix it keeps it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

from jupyter_client.kernelspec import KernelSpecManager
from traitlets import Unicode
from traitlets.config import Application

KERNEL_NAME = "jax"


def kernelspec_source() -> Path:
    """The kernelspec files shipped with the package (or, in a source checkout, the repo's)."""
    package = Path(__file__).resolve().parent.parent
    packaged = package / "data" / "kernelspec"
    if (packaged / "kernel.json").exists():
        return packaged
    return package.parent / "kernelspec"


def write_kernel_spec(
    path: Path, python: str = sys.executable, display_name: str | None = None, provisioner: bool = True
) -> Path:
    """Write the kernelspec into ``path`` with argv[0] set to ``python``."""
    path.mkdir(parents=True, exist_ok=True)
    for item in kernelspec_source().iterdir():
        if item.is_file():
            shutil.copy(item, path / item.name)
    spec_file = path / "kernel.json"
    spec = json.loads(spec_file.read_text())
    spec["argv"][0] = python
    if display_name:
        spec["display_name"] = display_name
    if not provisioner:
        spec.get("metadata", {}).pop("kernel_provisioner", None)
    spec_file.write_text(json.dumps(spec, indent=2) + "\n")
    return path


def provisioner_by_default(prefix: str | None) -> bool:
    """Whether a spec installed here names the provisioner unless told: only in this environment's
    own prefix, where the Jupyter server that reads it runs in this environment too."""
    return prefix is not None and Path(prefix).resolve() == Path(sys.prefix).resolve()


def install(
    user: bool = False,
    prefix: str | None = None,
    name: str = KERNEL_NAME,
    display_name: str | None = None,
    provisioner: bool | None = None,
) -> str:
    """Install the kernelspec and return the directory it went to.

    ``provisioner`` None: only where no other environment's Jupyter is likely to read it (this
    environment's prefix)."""
    if provisioner is None:
        provisioner = provisioner_by_default(prefix)
    with tempfile.TemporaryDirectory() as tmp:
        src = write_kernel_spec(Path(tmp) / name, display_name=display_name, provisioner=provisioner)
        return KernelSpecManager().install_kernel_spec(str(src), name, user=user, prefix=prefix)


class InstallJaxKernelSpecApp(Application):
    """``python -m jax_kernel install [--user | --sys-prefix | --prefix P]``."""

    name = Unicode("jax-kernel-install")
    description = "Install the jax kernelspec."

    def initialize(self, argv: list[str] | None = None) -> None:
        self.argv = sys.argv[1:] if argv is None else argv

    def start(self) -> None:
        parser = argparse.ArgumentParser(prog="python -m jax_kernel install", description=self.description)
        where = parser.add_mutually_exclusive_group()
        where.add_argument("--user", action="store_true", help="install for the current user")
        where.add_argument(
            "--sys-prefix",
            action="store_const",
            const=sys.prefix,
            dest="prefix",
            help=f"install into sys.prefix ({sys.prefix})",
        )
        where.add_argument("--prefix", help="install under this prefix (share/jupyter/kernels)")
        parser.add_argument("--name", default=KERNEL_NAME, help="kernelspec name (default: jax)")
        parser.add_argument("--display-name", help="name shown in frontends")
        parser.add_argument(
            "--provisioner",
            action=argparse.BooleanOptionalAction,
            default=None,
            help="name jax-kernel's provisioner in the spec, for sub-second restarts; the Jupyter server "
            "must then be able to import jax_kernel, or it hides the kernel (default: only with --sys-prefix)",
        )
        opts = parser.parse_args(self.argv)
        try:
            dest = install(
                user=opts.user,
                prefix=opts.prefix,
                name=opts.name,
                display_name=opts.display_name,
                provisioner=opts.provisioner,
            )
        except OSError as e:
            print(
                f"error: could not install the kernelspec: {e}. Try --user or --sys-prefix.", file=sys.stderr
            )
            self.exit(1)
        print(f"Installed kernelspec {opts.name} in {dest}")
        named = opts.provisioner if opts.provisioner is not None else provisioner_by_default(opts.prefix)
        if not named:
            print(
                "Restarts start a new kernel process (no spare): a Jupyter server in another environment "
                "can use this spec. If yours can import jax_kernel, install with --provisioner for "
                "sub-second restarts."
            )
