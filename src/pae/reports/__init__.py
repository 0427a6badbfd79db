"""Tables and figures built from run outputs (``metrics.json``), never from numbers typed by hand."""
