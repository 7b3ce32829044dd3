"""The kernels' environment settings, checked without loading torch or Triton: the app's start-up check asks here
(the app may import models, not kernels), so a bad value is refused before the model loads on any machine, not when
the kernels read it on a GPU after the load. The tables and checks are kernels.settings' and kernels.plan's, which
import neither."""

from kernels.plan import check_tables  # noqa: F401 (re-exported for the app: CODECOMPLETE_PLANS_DIR's tables)
from kernels.settings import FILES, gemv_mode  # noqa: F401 (gemv_mode re-exported for the app)

GEMV = "CODECOMPLETE_GEMV"     # read by models.llama.Transformer.compile_dense, on a GPU


def check_file_entries(name: str, entries: dict) -> None:
    """The JSON object of file variable `name` (one of FILES), as the kernels will read it: a ValueError naming the
    entry that they would refuse."""
    FILES[name](entries)
