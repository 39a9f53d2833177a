#!/usr/bin/env bash
# Make sure RabbitMQ (with its management API), Redis and PostgreSQL answer on 127.0.0.1,
# starting any that has stopped the way this machine's services are started.
set -euo pipefail

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_for() {
  local name=$1 port=$2
  for _ in $(seq 1 60); do
    if listening "$port"; then echo "ok: $name on 127.0.0.1:$port"; return 0; fi
    sleep 1
  done
  echo "error: $name did not come up on 127.0.0.1:$port" >&2
  return 1
}

if ! listening 5672; then
  echo "starting RabbitMQ"
  rabbitmq-server -detached
fi
wait_for RabbitMQ 5672

if ! listening 6379; then
  echo "starting Redis"
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
fi
wait_for Redis 6379

if ! listening 5432; then
  echo "starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql)" main start
fi
wait_for PostgreSQL 5432

# `sous queues` and the queue-depth tests read unacked counts from the management API.
if ! listening 15672; then
  echo "enabling the RabbitMQ management plugin"
  rabbitmqctl await_startup >/dev/null
  rabbitmq-plugins enable rabbitmq_management >/dev/null
fi
wait_for "RabbitMQ management API" 15672
