"""Certificate methods: one registry, one signature.

Each method is a ``Method``, registered once (a second registration of a name is refused): its name, one line
for ``--help``, ``applies(task)`` (None, or the reason it does not apply to this model), and ``radii(task)``:
the certified radius of every input of the ``Task`` in the model's input space, each a proof that no
perturbation of smaller norm changes the prediction (0 where the input is misclassified), and
``verified(task, eps)``: per input, whether the closed ball of radius eps is proved (a direct check at eps for
the methods that have one, IBP and BCP; else their radii, ``certified_at``). The command line's
choices, ``--method best``'s portfolio (every registered method, in registration order, keeping the largest
radius per input: all are sound), ``methods_skipped`` and training's held-out evaluation read the registry, so
a method's name is written here and nowhere else.

"Certified at eps" has one definition, ``verifier.certificates.certify.certified_at``: a radius strictly above eps.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from verifier.errors import LipverifyError, NoRuleError

if TYPE_CHECKING:
    from torch import Tensor

    from verifier.certificates.certify import Bounds
    from verifier.ir import GraphModule
    from verifier.problem import RadiusProblem

#: the name of the portfolio: every method that applies, the largest radius per input
BEST = "best"


@dataclass
class Task:
    """What every method certifies: the ``problem`` (``verifier.problem.RadiusProblem``: inputs in model space
    on the CPU, their labels, the norm 2 or inf, the domain box; no centres when only the logits are needed),
    the model (``module``, on its device; None when only the logits are needed), its Lipschitz ``bounds``, its
    ``logits`` on the inputs, a batch size, and ``found``: the largest radii the methods run before found (a
    sound start for searches)."""

    problem: RadiusProblem
    logits: Tensor
    bounds: Bounds
    module: GraphModule | None = None
    batch_size: int = 256
    found: Tensor | None = None
    _cpu: Any = field(default=None, init=False, repr=False)
    _prop2: Any = field(default=None, init=False, repr=False)
    _crown: Any = field(default=None, init=False, repr=False)

    @property
    def y(self) -> Tensor:
        return self.problem.labels

    @property
    def norm(self) -> float:
        return self.problem.norm

    def cpu_module(self) -> GraphModule:
        """The module itself on the CPU, else one CPU copy for every method (LipLT, IBP, BCP and local bound
        in float64 on the CPU)."""
        if self._cpu is None:
            self._cpu = copy.deepcopy(self.module).cpu() if self.module.device.type != "cpu" else self.module
        return self._cpu

    def start(self) -> Tensor | None:
        """LMT Prop. 2's radii (a sound lower end for BCP's and local's searches) when they apply, computed
        once."""
        if self._prop2 is None and _affine_logits(self) is None:  # (not where Lipschitz rules are missing)
            self._prop2 = _prop2(self).cpu()
        return self._prop2


@dataclass(frozen=True)
class Method:
    """One certificate method (see the module docstring). ``check``, when given, decides a radius directly
    (one verification at eps instead of a radius search)."""

    name: str
    summary: str
    compute: Callable[[Task], Tensor]
    condition: Callable[[Task], str | None] = lambda task: None
    check: Callable[[Task, float], Tensor] | None = None

    def applies(self, task: Task) -> str | None:
        """None when the method applies to ``task``'s model, else why not (one line)."""
        return self.condition(task)

    def radii(self, task: Task) -> Tensor:
        """Model-space certified radii, one per input; ``LipverifyError`` when it does not apply."""
        self._refuse(task)
        return self.compute(task)

    def verified(self, task: Task, eps: float) -> Tensor:
        """Per input, whether the method proves the prediction on the closed ball of radius ``eps`` (model space):
        ``certified_at`` its radii, or its direct check at eps where it has one."""
        from verifier.certificates.certify import certified_at

        self._refuse(task)
        if self.check is not None:
            return self.check(task, eps)
        return certified_at(self.compute(task), eps)

    def _refuse(self, task: Task) -> None:
        why = self.applies(task)
        if why is not None:
            raise LipverifyError(f"--method {self.name} {why}")


METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    if method.name in METHODS or method.name == BEST:
        raise ValueError(f"certificate method {method.name!r} is registered twice")
    METHODS[method.name] = method
    return method


def default_method(bounds: Bounds) -> Method:
    """What ``certify`` runs without ``--method``: Proposition 2 when the logits come from an affine layer, else
    Proposition 1."""
    return LMT_PAIRWISE if bounds.l2.last_matrix is not None else LMT


def certified_radii(logits: Tensor, y: Tensor, bounds: Bounds, norm: float, method: str) -> Tensor:
    """Radii of a method that needs only the logits and the Lipschitz bounds (``lmt``, ``lmt-pairwise``)."""
    from verifier.problem import RadiusProblem

    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    return METHODS[method].radii(Task(RadiusProblem(None, y, norm), logits=logits, bounds=bounds))


# ------------------------------------------------------------------------------------------------ the methods
def _lipschitz_rules(task: Task) -> str | None:
    """Why a method that needs Lipschitz bounds of every tensor does not apply (a partial report), or None."""
    reports = [task.bounds.l2] + ([task.bounds.linf] if task.norm != 2 and task.bounds.linf is not None else [])
    missing = next((r.missing for r in reports if r.missing), None)
    if missing is not None:
        return f"needs a Lipschitz rule for every op ({missing}); --method ibp, crown or best do not"
    return None


def _affine_logits(task: Task) -> str | None:
    if task.bounds.l2.last_matrix is None:
        return "needs a model whose logits come from an affine layer; use --method lmt"
    return _lipschitz_rules(task)


def _batched_lipschitz(task: Task) -> str | None:
    return _batched(task) or _lipschitz_rules(task)


def _batched(task: Task) -> str | None:
    if not task.module.graph.whole_batches:
        return "needs a model that runs whole batches (this one runs sample by sample)"
    return None


def _prop1(task: Task) -> Tensor:
    from verifier.certificates.certify import prop1_radii

    return prop1_radii(task.logits, task.y, task.bounds, task.norm)


def _prop2(task: Task) -> Tensor:
    from verifier.certificates.certify import prop2_radii

    return prop2_radii(task.logits, task.y, task.bounds, task.norm)


def _liplt(task: Task) -> Tensor:
    from verifier.certificates.certify import pairwise_radii
    from verifier.engines.liplt import liplt

    report = task.bounds.l2 if task.norm == 2 else task.bounds.linf
    try:
        pairs = liplt(task.cpu_module(), task.norm, naive=report).pairwise  # naive where LipLT cannot map
    except NoRuleError as e:
        raise LipverifyError(f"--method liplt: {e}")
    return pairwise_radii(task.logits.cpu(), task.y.cpu(), pairs)


def _ibp(task: Task) -> Tensor:
    from verifier.engines.bcp import ibp_radii

    return ibp_radii(task.cpu_module(), task.bounds.l2, task.problem, batch_size=task.batch_size).cpu()


def _ibp_check(task: Task, eps: float) -> Tensor:
    from verifier.engines.bcp import verify_ibp

    return verify_ibp(task.cpu_module(), task.bounds.l2, task.problem.at(eps)).cpu()


def _bcp(task: Task) -> Tensor:
    from verifier.engines.bcp import bcp_radii

    return bcp_radii(task.cpu_module(), task.bounds.l2, task.problem, start=task.start(),
                     batch_size=task.batch_size).cpu()


def _bcp_check(task: Task, eps: float) -> Tensor:
    """BCP at eps, or LMT Prop. 2 (``bcp_radii`` starts from it) where it applies."""
    from verifier.certificates.certify import certified_at
    from verifier.engines.bcp import verify_bcp

    ok = verify_bcp(task.cpu_module(), task.bounds.l2, task.problem.at(eps)).cpu()
    start = task.start()
    return ok if start is None else ok | certified_at(start, eps)


def _crown_start(task: Task) -> Tensor | None:
    """The largest radius found so far and Prop. 2's, whichever are known (a sound start for a search)."""
    import torch

    found, prop2 = task.found, task.start()
    if found is None or prop2 is None:
        return found if prop2 is None else prop2.double()
    return torch.maximum(found.double(), prop2.double())


def _crown(task: Task) -> Tensor:
    """CROWN's radii (over BCP's boxes in l2), by bisection above the radii already found."""
    from verifier.engines.crown import crown_radii

    report = _crown_report(task)
    task._crown = crown_radii(task.cpu_module(), task.problem, report, start=_crown_start(task),
                              batch_size=task.batch_size).cpu()
    return task._crown


def _crown_check(task: Task, eps: float) -> Tensor:
    from verifier.certificates.certify import certified_at
    from verifier.engines.crown import context, verify_crown

    module = task.cpu_module()
    ok = verify_crown(module, task.problem.at(eps), *context(module, _crown_report(task))).cpu()
    start = task.start()
    return ok if start is None else ok | certified_at(start, eps)


def _crown_report(task: Task) -> Any:
    """The l2 Lipschitz report whose BCP boxes start CROWN's forward passes (l2 only: for l_inf balls the
    circumscribed l2 ball's boxes cost more than they give)."""
    return task.bounds.l2 if task.norm == 2 and task.bounds.l2.missing is None else None


def _alpha_crown(task: Task) -> Tensor:
    """alpha-CROWN's radii, by bisection above CROWN's radii and those already found (so never below CROWN's)."""
    import torch

    from verifier.engines.alpha_crown import alpha_crown_radii

    report = _crown_report(task)
    start = (task._crown if task._crown is not None else _crown(task)).double()
    if task.found is not None:
        start = torch.maximum(start, task.found.double().cpu())
    return alpha_crown_radii(task.cpu_module(), task.problem, report, start=start,
                             batch_size=task.batch_size).cpu()


def _local(task: Task) -> Tensor:
    """Starts its search at the largest radius found so far (or Prop. 2's) and reports only radii it proves."""
    import torch

    from verifier.engines.local import check_supported, local_radii

    module = task.cpu_module()
    try:
        check_supported(module, task.bounds.l2)
    except NoRuleError as e:
        raise LipverifyError(f"--method local: {e}")
    found = task.found if task.found is not None else torch.zeros(len(task.y), dtype=torch.float64)
    prop2 = task.start()
    start = found if prop2 is None else torch.maximum(found, prop2.double())
    return local_radii(module, task.bounds.l2, task.problem, start=start, batch_size=task.batch_size).cpu()


def _kernel_machine(task: Task) -> str | None:
    from verifier.engines.kernel import find_machine

    if task.module is None:
        return "needs the model"
    found = find_machine(task.module)
    return found if isinstance(found, str) else None


def _kernel(task: Task) -> Tensor:
    from verifier.engines.kernel import find_machine, kernel_radii

    return kernel_radii(find_machine(task.module), task.problem)


LMT = register(Method("lmt", "LMT Proposition 1: margin / (sqrt(2) L)", _prop1, _lipschitz_rules))
LMT_PAIRWISE = register(Method("lmt-pairwise", "LMT Proposition 2 (with the last affine layer)", _prop2,
                               _affine_logits))
LIPLT = register(Method("liplt", "min_j (z_y - z_j) / L_yj with LipLT's pairwise bounds (CRM eq. 5)", _liplt,
                        _lipschitz_rules))
IBP = register(Method("ibp", "interval bound propagation", _ibp, _batched, _ibp_check))
BCP = register(Method("bcp", "box constraint propagation (Lee et al. 2020)", _bcp, _batched_lipschitz, _bcp_check))
CROWN = register(Method("crown", "CROWN: linear bounds propagated backward (Zhang et al. 2018), over BCP's boxes in "
                        "l2", _crown, _batched, _crown_check))
ALPHA_CROWN = register(Method("alpha-crown", "alpha-CROWN: CROWN with its ReLU lower slopes optimized (Xu et al. "
                              "2021)", _alpha_crown, _batched))
LOCAL = register(Method("local", "local Cross-Lipschitz bounds (Hein & Andriushchenko Thm 2.1, gradient boxes "
                        "over BCP's boxes)", _local, _batched_lipschitz))
KERNEL = register(Method("kernel", "RBF-kernel SVMs: Hein & Andriushchenko Thm 2.1 with the closed-form local bound of "
                         "Prop. 2.1", _kernel, _kernel_machine))


def help_text() -> str:
    """The ``--method`` help: every method's name and summary, then ``best``."""
    listed = "; ".join(f"{m.name}: {m.summary}" for m in METHODS.values())
    return (f"{listed}; {BEST}: all that apply, the largest radius per input (all are sound). Default: "
            f"{LMT_PAIRWISE.name} when the logits come from an affine layer, else {LMT.name}.")
