"""The last stage: the whole product in one call, and the report a person reads.

`run_chain` trains (or resumes) a supernet, searches the best child per
budget, exports each chosen child (Keras, SavedModel, TFLite), times the files
on this host and writes `WORKDIR/report.md` and `report.html` (`report`).
Each stage skips what is already complete, so an interrupted chain continues
where it stopped; `pipelines/run_all.py` is its program.

May import: every other package of tf_bignas (it is the top of the stack).
"""

from tf_bignas.chain.report import write_report
from tf_bignas.chain.run import ChainError, ChainResult, run_chain

__all__ = ["ChainError", "ChainResult", "run_chain", "write_report"]
