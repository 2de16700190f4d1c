"""The fleet: many homes on many machines, on DBOS Transact + PostgreSQL (`agentd[fleet]`).

Nothing here is imported by the single-machine runtime: `agentd --help`, `run`, the daemon
and the bridge start as fast as before and need no new package.

How it fits (one PostgreSQL database holds DBOS's tables and ours, schema `agentd_fleet`):

- engine.py     DBOS configured one way for every process: the app name, a pinned
                application version (workers of one release recover each other's turns),
                the `turns` queue (one turn per home fleet-wide: a partition per home).
- db.py         our tables: homes (name, git URL, head, schedule), workers (liveness),
                usage (the ledger, one row per model call, fleet-wide sums), state (runtime
                files that travel with a home: transcripts, heartbeat and cron state).
- turnflow.py   a turn is a DBOS workflow; each model call and each tool call is a step.
- durable.py    the step wrappers: a model call's reply and a tool call's result (with
                the patch it made to the home's files) are checkpointed, so a turn
                recovered on another worker rebuilds the tree and does not repeat them.
- workspace.py  git travelling with the turn: a worker's mirror of each home, a clone at
                the turn's base commit, one commit pushed fast-forward at the end (rebased
                onto what the owner pushed meanwhile, never forced, never lost).
- snapshot.py   a tool step's change to the clone as a binary patch between two tree
                snapshots (confined git), and its replay on a fresh clone.
- carry.py      the runtime files outside git (the session's transcript, daemon state)
                and the usage ledger, between a turn's clone and the database.
- worker.py     `agentd fleet worker`: launches DBOS, beats liveness, recovers the turns
                of workers silent for longer than `dead_after`, runs the tick.
- tick.py       cron and heartbeat: one tick per interval fleet-wide (a DBOS schedule);
                each due time becomes a turn whose workflow ID (home, job, due time) is its
                idempotency key, so it fires once however many workers tick.

Workflow IDs: `run:HOME:UUID` (fleet run, webhooks, chat), `cron:HOME:JOB:DUE`,
`heartbeat:HOME:DUE` (DUE in UTC, ISO 8601, to the second).
"""
