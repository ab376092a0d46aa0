"""PostgreSQL: connections and client programs, servers run as their OS owner, scratch clusters."""
