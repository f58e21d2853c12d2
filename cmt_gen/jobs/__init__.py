"""What the commands do, one module each, on top of the library: `build` (guard memory, build, load
weights, one forward) and `export` (reload the written graph, run two sizes, compare with eager)."""
