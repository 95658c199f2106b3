#!/usr/bin/env bash
# Start whichever of the local RabbitMQ, Redis and PostgreSQL is down, and wait until each
# answers. Used before the tests, and by the fault-injection tests to restore what they stopped.
# The commands are those of a development machine with the Debian packages of the three.
set -euo pipefail

wait_for() {  # wait_for NAME COMMAND...: retry for up to 60 s
  local name=$1; shift
  for _ in $(seq 1 120); do
    if "$@" >/dev/null 2>&1; then echo "services: $name is up"; return 0; fi
    sleep 0.5
  done
  echo "services: $name did not come up" >&2
  return 1
}

if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  echo "services: starting Redis"
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
fi
wait_for Redis redis-cli -h 127.0.0.1 -p 6379 ping

if ! pg_isready -h 127.0.0.1 -p 5432 -q; then
  echo "services: starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql)" main start
fi
wait_for PostgreSQL pg_isready -h 127.0.0.1 -p 5432 -q

if ! rabbitmq-diagnostics -q ping >/dev/null 2>&1; then
  echo "services: starting RabbitMQ"
  rabbitmq-server -detached
fi
wait_for RabbitMQ rabbitmq-diagnostics -q check_port_connectivity

# A run of tests/integration/test_broker_alarm.py killed while its memory alarm was on leaves
# the watermark at its 1e-6, and every publisher on the machine blocked: set the configured one
# back (what a restart of RabbitMQ would do).
if [ "$(rabbitmqctl -q eval 'vm_memory_monitor:get_vm_memory_high_watermark().')" = "1.0e-6" ]; then
  configured=$(rabbitmqctl -q eval 'case application:get_env(rabbit, vm_memory_high_watermark) of {ok, {relative, W}} -> W; {ok, W} -> W; undefined -> 0.4 end.')
  echo "services: RabbitMQ's memory watermark was left at a test's 1e-6; setting $configured back"
  if [[ $configured == "{absolute,"* ]]; then
    configured=${configured#\{absolute,}
    rabbitmqctl -q set_vm_memory_high_watermark absolute "${configured%\}}"
  else
    rabbitmqctl -q set_vm_memory_high_watermark "$configured"
  fi
fi
