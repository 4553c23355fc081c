"""A seeded procedural video world for training and evaluating the embedded vrex-tiny model.

sim.py (dynamics + event log) -> render.py (frames, mp4) -> language.py (narrations, questions,
vocabulary) -> layout.py (stream token layout) -> data.py / train.py (training) ->
evaluate.py (torch reference run) / evaluate_runtime.py (the ONNX runtime, per retrieval policy)
+ score.py (scoring, independent of what produced the output).
"""
