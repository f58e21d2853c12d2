"""The `cmt-gen` command line, installed as `cmt_gen.cli`: thin Typer commands over the library."""
