"""torch.hub entry points: `torch.hub.load(repo_dir, "cmt_s", source="local")` builds the bundled CMTs.

`pretrained=True` downloads the authors' released checkpoint (CMT-L has none);
`weights=PATH` loads a local one (ours or the released layout, strictly).
`features_only=True` gives the stage maps; `num_classes` replaces the classifier
after loading; other spec fields go in `overrides` (`{"resolution": 256}`).
"""

dependencies = ["torch", "pydantic", "yaml"]


def _create(name, pretrained=False, weights=None, num_classes=None, features_only=False, out_indices=None,
            overrides=None):
    import torch

    from cmt_gen.errors import CheckpointError
    from cmt_gen.model.convert import load_checkpoint, load_state_dict_strict, unwrap_checkpoint
    from cmt_gen.model.network import build_model
    from cmt_gen.model.pretrained_cfg import RELEASE_URLS

    model = build_model(name, overrides=overrides)
    if weights is not None:
        load_checkpoint(model, weights)
    elif pretrained:
        url = RELEASE_URLS.get(name)
        if url is None:
            raise CheckpointError("the authors released no checkpoint for this variant", source=name,
                                  field="pretrained")
        state = torch.hub.load_state_dict_from_url(url, map_location="cpu", weights_only=True)
        load_state_dict_strict(model, unwrap_checkpoint(state), source=url)
    if features_only:
        features = build_model(model.spec, features_only=True, out_indices=out_indices)
        features.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("head.")})
        return features
    if num_classes is not None and num_classes != model.num_classes:
        model.reset_classifier(num_classes)
    return model


def cmt_ti(pretrained=False, **kwargs):
    """CMT-Ti (160 x 160), as released."""
    return _create("cmt_ti", pretrained, **kwargs)


def cmt_xs(pretrained=False, **kwargs):
    """CMT-XS (192 x 192), as released."""
    return _create("cmt_xs", pretrained, **kwargs)


def cmt_s(pretrained=False, **kwargs):
    """CMT-S (224 x 224), as released."""
    return _create("cmt_s", pretrained, **kwargs)


def cmt_b(pretrained=False, **kwargs):
    """CMT-B (256 x 256), as released."""
    return _create("cmt_b", pretrained, **kwargs)


def cmt_l(pretrained=False, **kwargs):
    """CMT-L (288 x 288): Table 2's figures, derived by cmt-gen; never released, so no weights."""
    return _create("cmt_l", pretrained, **kwargs)
