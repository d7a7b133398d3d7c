"""The parts a protocol is handed, built once per run by :func:`fedsim.build.build_parts`.

- :class:`~fedsim.parts.systems.Systems`: what the clock charges (transfers over the
  network, compute, memory, availability); :class:`~fedsim.parts.systems.StarSystems`
  is the stand-in without a topology (tests, tables without a city);
- :class:`~fedsim.parts.learning.Trainer`: the clients' data, the model, the training
  executor and device, the replay seam (``train(jobs) -> updates``);
- :class:`~fedsim.parts.learning.Evaluator`: the global test set and the metrics on it;
- :class:`~fedsim.parts.alignment.AlignmentServices`: alignment state, capacity
  estimator and policy of ``protocol.fedmoe.alignment``;
- :class:`~fedsim.parts.bundle.Parts`: the bundle, with the protocol's own typed
  config section and the run settings (rounds, horizon, evaluation period).

Parts take plain values, never the scenario: configuration meets the layers in
:mod:`fedsim.build` only.
"""
