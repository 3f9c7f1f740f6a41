"""ditlab.serve: `ditlab serve`, a local web page (Gradio) that samples checkpoints through ditlab.generate.

catalog.py   the checkpoints offered (fixed at start, picked by name, loaded one at a time)
requests.py  one click's values, checked against the server's limits, sampled, written as PNG + .npz
app.py       the Gradio page (needs the `serve` extra); cli.py the command

Importing this package does not import Gradio; `ditlab.serve.app` does.
"""
