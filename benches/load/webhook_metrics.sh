# shellcheck shell=bash
# Sourced by signalling.sh and api.sh: the webhook dispatcher's counters from callbridge's
# /metrics, for the callbridge-hooks and callbridge-hooks-stalled servers.
#
#   webhook_metrics BASE_URL   prints "delivered retried failed dropped pending in_flight
#                              queue_dropped store_errors queued" ("- - …" if /metrics did not
#                              answer). pending counts the events in flight; queued: built by the
#                              call engine and not yet taken into the outbox by the dispatcher.
webhook_metrics() {
    curl -s --max-time 2 "$1/metrics" 2>/dev/null | awk '
        /^callbridge_webhook_deliveries_total\{result="delivered"\}/ { d = $2 }
        /^callbridge_webhook_deliveries_total\{result="retried"\}/ { r = $2 }
        /^callbridge_webhook_deliveries_total\{result="failed"\}/ { f = $2 }
        /^callbridge_webhook_deliveries_total\{result="dropped"\}/ { x = $2 }
        /^callbridge_webhook_outbox_pending / { p = $2 }
        /^callbridge_webhook_in_flight / { i = $2 }
        /^callbridge_webhook_events_dropped_total / { q = $2 }
        /^callbridge_webhook_store_errors_total / { e = $2 }
        /^callbridge_webhook_events_queued / { w = $2 }
        END { if (d == "") print "- - - - - - - - -"; else print d + 0, r + 0, f + 0, x + 0, p + 0, i + 0, q + 0, e + 0, w + 0 }'
}
