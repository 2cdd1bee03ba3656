"""Every condition reason kiln reports, in one place (CamelCase, as the API conventions ask)."""

# RegistryLogin Ready
VERIFIED = "Verified"
NOT_VERIFIED = "VerificationDisabled"
SECRET_NOT_FOUND = "SecretNotFound"
SECRET_NOT_OPTED_IN = "SecretNotOptedIn"
INVALID_SECRET = "InvalidSecret"
AUTHENTICATION_FAILED = "AuthenticationFailed"
REGISTRY_UNREACHABLE = "RegistryUnreachable"
REGISTRY_ERROR = "RegistryError"  # 5xx, 429, a token service in trouble: worth asking again
REGISTRY_REJECTED = "RegistryRejected"  # another answer kiln did not expect: asking again will not help
IMAGE_NOT_FOUND = "ImageNotFound"
ADDRESS_NOT_ALLOWED = "AddressNotAllowed"
INSECURE_TOKEN_REALM = "InsecureTokenRealm"
CA_BUNDLE_NOT_FOUND = "CABundleNotFound"
# RegistryLogin SecretWatched
SECRET_WATCHED = "Labelled"
SECRET_NOT_LABELLED = "SecretNotLabelled"

# ImageBuild CredentialsReady
CREDENTIALS_RESOLVED = "CredentialsResolved"
LOGIN_NOT_FOUND = "RegistryLoginNotFound"
LOGIN_NOT_READY = "RegistryLoginNotReady"
LOGIN_CONFLICT = "RegistryLoginConflict"
PUSH_DENIED = "PushDenied"

# ImageBuild Ready / Reconciling / Stalled
INVALID_SPEC = "InvalidSpec"
BUILD_PENDING = "BuildPending"
BUILDING = "Building"
SUCCEEDED = "Succeeded"
SUSPENDED = "Suspended"
SUPERSEDED = "Superseded"
WAITING_FOR_CACHE_VOLUME = "WaitingForCacheVolume"
QUEUED = "Queued"
CREATE_REJECTED = "CreateRejected"
BASE_IMAGE_PULL_DENIED = "BaseImagePullDenied"
DOCKERFILE_ERROR = "DockerfileError"
TIMED_OUT = "TimedOut"
OUT_OF_MEMORY = "OutOfMemory"
EVICTED = "Evicted"
BUILDER_IMAGE_PULL_FAILED = "BuilderImagePullFailed"
REGISTRY_TRANSIENT = "RegistryTransientError"
BUILD_FAILED = "BuildFailed"
JOB_LOST = "JobDeleted"
POD_SECURITY_REJECTED = "PodSecurityRejected"
POD_CREATE_FAILED = "PodCreateFailed"
DIGEST_NOT_REPORTED = "DigestNotReported"
SIGNING_FAILED = "SigningFailed"  # pushed, but not signed: the digest is still reported
SBOM_GENERATOR_FAILED = "SBOMGeneratorFailed"
