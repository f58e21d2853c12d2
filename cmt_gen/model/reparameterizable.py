"""The `reparameterize()` hook of every layer that has a deploy form.

A mixin so that `layers` stays about the training form: the rewrites live in
`model.deploy` (imported on use, since it builds on `layers`). timm's
`reparameterize_model` finds the hook on each child and calls it.
"""

from __future__ import annotations


class Reparameterizable:
    def reparameterize(self, attention_kernel: str | None = None) -> None:
        """Rewrite this layer in place into its deploy form: same outputs, less work (eval only).

        `attention_kernel` as for `CMT.reparameterize` (None: the fastest on this device).
        """
        from cmt_gen.model import deploy

        deploy.reparameterize_layer(self, kernel=attention_kernel)
