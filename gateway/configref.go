package gateway

// ConfigReference documents every field of gateway.hcl.
const ConfigReference = `# gateway.hcl: the gateway's own settings. Policy is not here: it comes from
# the signed bundle named in the bundle block.

data_dir = "/var/lib/gatehouse"      # required (created 0700): the last good bundle, session
                                     # recordings and their ledger (recordings/), the recorder key
                                     # (recorder.key, unless recorder.key says otherwise) and its
                                     # public key (recorder.pub), and approval requests (approvals/,
                                     # unless the state block names a database)

# At least one protocol block is required; each is optional on its own.
postgres {
  listen             = "0.0.0.0:6432" # required in the block; host:port for PostgreSQL clients
  tls_cert           = "/etc/gatehouse/tls/server.crt"  # PEM certificate offered to clients
  tls_key            = "/etc/gatehouse/tls/server.key"  # its PEM private key
  insecure_plaintext = false          # true allows the token (the password) without TLS;
                                      # only accepted when listen is a loopback address
  limits {                            # optional; what one listener's callers may hold
    max_sessions              = 1000  # open sessions (0: no limit)
    max_sessions_per_identity = 50    # open sessions of one caller (an identity, or a subject)
    max_sessions_per_resource = 0     # open sessions of one resource: keep it below the
                                      # database's max_connections (default 0: no limit)
    max_pending               = 256   # connections not authenticated yet; the oldest is
                                      # closed to make room for a new one
    login_timeout             = "10s" # time to authenticate
    auth_failures_per_minute  = 0     # per source address; past it the address is refused
                                      # for the rest of the minute (default 0: no limit)
  }
}

ssh {
  listen             = "0.0.0.0:2222"  # required in the block; host:port for SSH clients
                                       # (ssh HOST@gateway -p 2222: the user names the ssh_host)
  host_key           = "/var/lib/gatehouse/ssh_host_ed25519_key"  # default DATA_DIR/ssh_host_ed25519_key,
                                       # created on first start; its fingerprint is logged
  record_shell_input = false           # record what callers type into shells (off: typed
                                       # passwords would land in recordings; also a command run
                                       # with a terminal, ssh -t); piped exec input is recorded
  record_limit       = 16777216        # bytes recorded per stream of a channel (default 16 MiB);
                                       # beyond it bytes are counted, not kept
  limits { }                           # as in the postgres block
}

kubernetes {
  listen       = "0.0.0.0:8443"        # required in the block; host:port of the HTTPS API for
                                       # kubectl: cluster NAME is https://gateway:8443/k8s/NAME
                                       # (gatehouse kubeconfig --resource NAME writes the kubeconfig)
  tls_cert     = "/etc/gatehouse/tls/kube.crt"  # PEM certificate offered to clients; when unset, a
  tls_key      = "/etc/gatehouse/tls/kube.key"  # self-signed one is made in DATA_DIR on first start
                                       # (kubernetes-tls.crt; gatehouse kubeconfig embeds it)
  record_limit = 16777216              # bytes of exec and attach output recorded per stream
  limits { }                           # as in the postgres block (a session is one token on one cluster)
}

bundle {
  file          = "/var/lib/gatehouse/policy.bundle"  # file or url, exactly one: a bundle file,
                                                      # watched (fsnotify) and polled
  # url         = "https://bundles.internal/prod/policy.bundle"  # or a bundle served over HTTPS:
                                                      # a web server, a CDN or an object store's
                                                      # https URL (an S3 object URL); polled with
                                                      # If-None-Match / If-Modified-Since (unchanged:
                                                      # a 304, no body); http:// only on loopback. On
                                                      # errors the polls back off (doubling, jittered,
                                                      # up to 10 poll intervals and at most 5m) and
                                                      # the last good bundle stays active
  # ca_file     = "/etc/gatehouse/tls/bundles-ca.pem" # optional, url only: PEM CAs trusted besides
                                                      # the system's
  # token       = "env:BUNDLE_TOKEN"                  # optional, url only: sent as Authorization:
                                                      # Bearer; env:NAME or file:/path (read for every
                                                      # request, so a rotated file is used), never the
                                                      # token itself
  trusted_keys  = ["/etc/gatehouse/gatehouse.pub"]    # required; PKIX PEM ed25519 public keys;
                                                      # list two during a key rotation
  poll_interval = "5s"                                 # default 5s (1s to 1h): how often the file or
                                                      # url is checked (fsnotify is used as well)
}

admin {
  listen       = "127.0.0.1:9090"    # optional; /healthz, /readyz, /metrics and /v1/bundle are open:
                                     # keep the listener on loopback or a private network.
                                     # /v1/approvals needs an OIDC bearer token from a trusted issuer
  tls_cert     = "/etc/gatehouse/tls/admin.crt"  # optional: serve HTTPS (tokens cross this listener)
  tls_key      = "/etc/gatehouse/tls/admin.key"
  admin_groups = ["security"]        # optional: may read every approval request; approving
                                     # always takes one of the rule's approver groups
  insecure_plaintext = false         # plain HTTP on an address that is not loopback is refused
                                     # unless this is true (logged as a warning at every start)
  ready_disk_free = 104857600        # /readyz fails when the recordings' file system has less
                                     # free space than this (bytes; default 100 MiB)
  max_bundle_age  = "0s"             # /readyz fails when the active bundle is older (0: never):
                                     # since it was loaded or, for a bundle url, since the url
                                     # last confirmed it (a 304, or the same bundle)
}

recorder {
  # Optional. What an attacker who can write data_dir can do under each setting:
  # docs/threat-model.md, Recordings.
  key    = "/etc/gatehouse/recorder.key"   # the key that seals recordings and signs the ledger:
                                     # a file (ed25519 PKCS#8 PEM, created on first start with
                                     # its .pub beside it), default DATA_DIR/recorder.key; keep it
                                     # outside data_dir, or name a key in a PKCS#11 token:
  # key  = "pkcs11:token=gatehouse;object=recorder?module-path=/usr/lib/softhsm/libsofthsm2.so"
                                     # (RFC 7512; an ed25519 key, signed with CKM_EDDSA;
                                     # gatehouse keygen --pkcs11 makes one)
  # pin  = "env:GATEHOUSE_HSM_PIN"   # the token's user PIN, for a PKCS#11 key: env:NAME or
                                     # file:/path (or pin-source in the URI), never the PIN itself
  anchor = "https://anchor.internal/v1/gatehouse/ledger"  # optional: every ledger entry is
                                     # also sent here, off the host: an http(s) URL (POST of
                                     # JSON lines; GET returns them for audit verify --anchor;
                                     # http only to loopback), an absolute file path on
                                     # write-once or append-only storage (never in data_dir),
                                     # or s3://BUCKET/PREFIX (one per replica), reached with the
                                     # bucket block's endpoint and credentials: each batch is a
                                     # new object, never overwritten, and retained under object
                                     # lock when the bucket has it
  anchor_token = "env:ANCHOR_TOKEN"  # optional: Authorization: Bearer for an http(s) anchor
  anchor_ca    = "/etc/gatehouse/tls/anchor-ca.pem"  # optional: CAs for an https anchor
  # anchor_retention = "8760h"       # s3:// anchor in an object lock bucket: retain each object
                                     # this long (default: the bucket's default retention)
  # anchor_lock_mode = "COMPLIANCE"  # with anchor_retention: COMPLIANCE (default; no one can
                                     # delete or shorten it) or GOVERNANCE
  # durability = "before_forward"    # when a PostgreSQL statement's event is durable:
                                     # before_forward (default): before the statement reaches
                                     # the database; before_response: forwarded once written, the
                                     # fdatasync overlaps the database's work, and no response
                                     # reaches any caller before every event written is durable
                                     # (a crash can lose
                                     # the event of a statement whose result the caller never
                                     # got; docs/gateway.md). SSH and Kubernetes: always before
  checkpoint_interval = "30s"        # default 30s (1s to 1h): how often the ledger records the
                                     # head of every open session that grew (and at shutdown)
  # bucket {                         # optional: upload each recording once its session ends,
                                     # and the ledger after it, to S3-compatible object storage;
                                     # the local write stays first, and the local copy is kept
  #   url        = "s3://audit-recordings/gatehouse"  # s3://BUCKET/PREFIX
  #   endpoint   = "https://s3.internal:9000"  # default AWS S3; http only on loopback
  #   region     = "us-east-1"
  #   access_key = "env:GATEHOUSE_S3_ACCESS_KEY"   # secret references (env:NAME, file:/path);
  #   secret_key = "env:GATEHOUSE_S3_SECRET_KEY"   # both empty: anonymous requests
  #   max_behind = "15m"             # /readyz fails while a recording waits longer for upload
  #                                  # (failures are retried with backoff; 0: never)
  # }
}

state {
  # Optional: state that several gateway replicas share. Without it, approval requests are
  # kept in data_dir, for this gateway alone.
  postgres = "env:GATEHOUSE_STATE_DSN"  # required in the block: the DSN of a PostgreSQL database
                                     # (postgres://user:password@host:5432/db?sslmode=verify-full)
                                     # as a secret reference, env:NAME or file:/path, never the DSN
                                     # itself. Approval requests live there: a vote through any
                                     # replica settles a request held on any other, and a
                                     # single-use approval is spent once across them. With a
                                     # recorder.bucket block too, the session index lives there:
                                     # gatehouse sessions list --state lists every replica's
                                     # sessions without reading the bucket. The schema is
                                     # created and migrated at start (the role needs CREATE on the
                                     # schema); gatehouse gateway --check reports its version
  key      = "env:GATEHOUSE_STATE_KEY"  # optional, and recommended: a secret reference to a key of at
                                     # least 32 bytes, the same on every replica and never stored in
                                     # the database. Each approval request's row carries an HMAC under
                                     # it; a row written or changed without it is ignored. Without a
                                     # key, whoever can write the database can approve requests
}

log {
  level  = "info"                    # debug, info, warn, error
  format = "text"                    # text or json
}

auth {
  clock_skew = "30s"                 # allowed on token exp and nbf; at most 5m
}
`
