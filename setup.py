"""Generates the gRPC code from proto/ at build time (never committed).

Regular builds write into the build tree; editable installs write next to the
sources (git-ignored), which is what setuptools expects from build_py there.
"""
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).parent.resolve()
PROTO_ROOT = ROOT / "proto"


def generate(out_dir: Path) -> None:
    from grpc_tools import protoc
    import grpc_tools

    out = out_dir / "layermatte" / "proto"
    out.mkdir(parents=True, exist_ok=True)
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.rglob("*.proto"))
    include = str(Path(grpc_tools.__file__).parent / "_proto")
    args = ["protoc", f"-I{PROTO_ROOT}", f"-I{include}", f"--python_out={out}",
            f"--grpc_python_out={out}", "--include_imports",
            f"--descriptor_set_out={out / 'layermatte_v1.desc'}", *protos]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed on " + " ".join(protos))
    # protoc writes absolute-style imports ("from layermatte.v1 import ..."): make
    # the generated tree a package rooted at layermatte.proto.
    for d in [out, *[p for p in out.rglob("*") if p.is_dir()]]:
        (d / "__init__.py").touch()
    for f in out.rglob("*_pb2*.py"):
        text = f.read_text()
        f.write_text(text.replace("from layermatte.v1 import", "from layermatte.proto.layermatte.v1 import"))


class BuildPy(build_py):
    def run(self):
        target = ROOT / "daemon" if self.editable_mode else Path(self.build_lib)
        generate(target)
        if self.editable_mode:
            # The generated folders are packages in the source tree: declared, since
            # they did not exist when setuptools looked for packages.
            gen = target / "layermatte" / "proto"
            for d in sorted([gen, *[p for p in gen.rglob("*") if p.is_dir() and p.name != "__pycache__"]]):
                name = ".".join(d.relative_to(target).parts)
                if name not in self.packages:
                    self.packages.append(name)
        else:
            # Regular builds: the generated code lives only in the build tree, which
            # goes into the wheel as it is; so do the plug-ins (editable installs
            # read plugins/ from the checkout).
            import shutil
            dest = target / "layermatte" / "_plugins"
            shutil.rmtree(dest, ignore_errors=True)
            shutil.copytree(ROOT / "plugins", dest,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "tests"))
        super().run()


setup(cmdclass={"build_py": BuildPy})
