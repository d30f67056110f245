# Import verispec before any solvers module: at the time of writing ``import solvers.base`` (or
# bounds / lowering / milp / smt) as the first import fails with a circular import
# (solvers.lowering -> verispec -> verispec.api -> solvers.base -> solvers.bounds ->
# solvers.lowering). test_base.py::test_solvers_import_on_their_own tracks that bug; remove
# this line once it passes.
import verispec  # noqa: F401
