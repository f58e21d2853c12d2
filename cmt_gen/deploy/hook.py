"""How a trained layer names its deploy rewrite, and how a rewritten one says it is done.

A trained layer class carries `deploy_rewrite`, a staticmethod from this package,
as it carries `complexity` from `cost.analytic`: the model imports the deploy
package, never the reverse, so there is no import circle. timm's
`reparameterize_model` finds `reparameterize()` on each child and calls it.
"""

from __future__ import annotations

from torch import nn

from cmt_gen.deploy.attention_kernels import check_kernel
from cmt_gen.deploy.folding import leave_inference_mode


class Reparameterizable:
    """Mixin of the trained layers that have a deploy form."""

    # Each class sets `deploy_rewrite = staticmethod(f)`, f(layer, kernel). Not annotated here: TorchScript
    # before torch 2.3 reads a scripted module's class annotations and fails on a ClassVar written as text.

    def reparameterize(self, attention_kernel: str | None = None) -> None:
        """Rewrite this layer in place into its deploy form: same outputs, less work.

        `attention_kernel` as for `CMT.reparameterize` (None: the fastest on this device).
        """
        check_kernel(attention_kernel)
        type(self).deploy_rewrite(self, attention_kernel)
        leave_inference_mode(self)
        for parameter in self.parameters():  # inference weights: nothing may train them (see DeployForm.train)
            parameter.requires_grad_(False)
        for module in self.modules():  # the rewrite's new submodules take the layer's mode
            module.training = self.training


TRAINING_REFUSED = (
    "this layer is in the deploy form: reparameterize() folded its norms into the weights, so training "
    "it would train another network (BatchNorm statistics frozen, weights that no longer match the "
    "trained layout); train the model from build_model() and call reparameterize() afterwards")


class DeployForm:
    """Mixin of the rewritten layers: `reparameterize()` again is a no-op, as timm expects, and
    training is refused (its weights are frozen and `train()` raises)."""

    def reparameterize(self, attention_kernel: str | None = None) -> None:
        """Already in the deploy form."""

    def train(self, mode: bool = True):
        if mode:
            raise RuntimeError(TRAINING_REFUSED)
        return super().train(mode)


def is_deploy_form(model: nn.Module) -> bool:
    """True once no layer of `model` is left in its trained form."""
    return not any(isinstance(m, Reparameterizable) for m in model.modules())
