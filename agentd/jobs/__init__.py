"""Queued turns: what the daemon (heartbeat, cron, inbox) and the bridge (chats, webhooks)
share, so both import it and neither imports the other.

- queue.py    one bounded priority queue per home, one turn at a time, under the turn lock;
- records.py  `run_job_turn`: agentd.turn.run_turn plus the in-flight marker (crash
              recovery), a row in runs.jsonl (`agentd status`) and the log lines;
- log.py      one log line per event (`EventLog`), a turn's tool calls as lines;
- state.py    small JSON state files under .agentd/daemon/.

The turn itself, with its delivery to outbox/, is agentd/turn.py and agentd/outbox.py.
"""
