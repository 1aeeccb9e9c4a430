"""Testing helpers: comparison with namespace checks, gradient checks, strategies.

``implicitnet.testing.strategies`` (hypothesis) is imported on demand, so hypothesis is
needed only by code that uses it.
"""

from ._assert import assert_close as assert_close
from ._gradcheck import GradCheckResult as GradCheckResult
from ._gradcheck import check_grads as check_grads
