"""The download reconciler: moves a model's weights PENDING -> PULLING -> READY (or FAILED).

``plan`` holds every decision as pure functions (table-tested); ``reconciler`` is the
controller (fed by the event log, a watch and a resync) that reads, plans and applies;
``running`` is what one worker runs, in this process or in a Job's pod; ``removing`` discards
partials and removes weights for the leader; ``executions`` is the seam to the runtimes.
Where the worker runs is a runtime's business (:mod:`controllers.runtimes`); how bytes move is
the transfer engine's (:mod:`controllers.transfer`). See docs/architecture.md.
"""
