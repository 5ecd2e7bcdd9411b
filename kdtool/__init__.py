"""kdtool: recipes that compress speech recognition models by knowledge distillation.

The packages are layers; a module imports from its own layer and those below, never above
(tests/test_layering.py checks it):

    errors.py, utils/                 expected errors (KdtoolError, ConfigError); YAML reading, job slicing,
                                      atomic writes, locks, dump provenance, the environment record
    data/, features/, tokens/         Kaldi-style data dirs; fbank and CMVN; the token list
    models/                           the model kinds from espnet2 blocks, built from configs, loaded, packed
    kd/, train/, decode/, export/,    distillation (stages 4-5); training (3); decoding (6); ONNX export;
    scoring/                          error rates, the results table and RESULTS.md (7)
    bin/                              the command-line entry points, which nothing else imports
"""

__version__ = "0.1.0"
