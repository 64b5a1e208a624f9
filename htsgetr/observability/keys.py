"""WSGI environ keys the observability layer and the views share (no imports: the fast path
reads them)."""

#: the app's `middleware.Observer`, the request ID, when the request started (perf_counter)
OBSERVER = "htsgetr.observer"
REQUEST_ID = "htsgetr.request_id"
STARTED = "htsgetr.started"
#: the ticket request's parsed `protocol.Query` and, once issued, its `protocol.Ticket`
QUERY = "htsgetr.query"
TICKET = "htsgetr.ticket"
