"""Layer 5, the trained torch network: layers, the CMT module and `build_model`, checkpoint conversion
(its deploy form is `cmt_gen.deploy`)."""
