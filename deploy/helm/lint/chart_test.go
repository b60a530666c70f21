package lint

import (
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"helm.sh/helm/v3/pkg/action"
	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/lint"
	"helm.sh/helm/v3/pkg/lint/support"
	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	"sigs.k8s.io/yaml"
)

var chartDir = filepath.Join("..", "mcpauth")

// requiredValues are the values the chart cannot default: with them, the
// chart's defaults are a working two-replica installation. The secret
// values are recognisable so the test can look for them where they must
// not be.
var requiredValues = map[string]any{
	"publicURL":  "https://mcpauth.example.com",
	"database":   map[string]any{"url": "postgres://mcpauth:db-password-SECRET@pg:5432/mcpauth?sslmode=require"},
	"redis":      map[string]any{"url": "rediss://:redis-password-SECRET@redis:6380/0"},
	"masterKeys": "1:bWFzdGVyLWtleS1TRUNSRVQtbWFzdGVyLWtleS1TRUNSRVQ=",
	"callers": `{"callers": [{"name": "console", "key_sha256": "` + strings.Repeat("ab", 32) +
		`", "tenants": ["*"], "permissions": ["*"]}]}`,
}

var secretValues = []string{"db-password-SECRET", "redis-password-SECRET", "bWFzdGVyLWtleS1TRUNSRVQ", strings.Repeat("ab", 32)}

func productionValues(t *testing.T) map[string]any {
	t.Helper()
	v, err := chartutil.ReadValuesFile(filepath.Join(chartDir, "ci", "production-values.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// rendered is one release's manifests, hooks included, decoded by kind.
type rendered struct {
	deployments []appsv1.Deployment
	jobs        []batchv1.Job
	services    []corev1.Service
	configMaps  []corev1.ConfigMap
	secrets     []corev1.Secret
	pdbs        []policyv1.PodDisruptionBudget
	raw         string
}

// render runs what "helm template" runs: an install, client only, dry run.
func render(t *testing.T, vals map[string]any) (*rendered, error) {
	t.Helper()
	chrt, err := loader.Load(chartDir)
	if err != nil {
		t.Fatal(err)
	}
	cfg := &action.Configuration{Log: func(string, ...any) {}}
	inst := action.NewInstall(cfg)
	inst.DryRun, inst.ClientOnly, inst.Replace = true, true, true
	inst.ReleaseName, inst.Namespace = "mcpauth", "platform"
	rel, err := inst.Run(chrt, vals)
	if err != nil {
		return nil, err
	}
	docs := []string{rel.Manifest}
	for _, h := range rel.Hooks {
		docs = append(docs, h.Manifest)
	}
	r := &rendered{raw: strings.Join(docs, "\n---\n")}
	for _, doc := range strings.Split(r.raw, "\n---") {
		var head struct{ Kind string }
		if err := yaml.Unmarshal([]byte(doc), &head); err != nil {
			t.Fatalf("rendered YAML does not parse: %v\n%s", err, doc)
		}
		var target any
		switch head.Kind {
		case "Deployment":
			r.deployments = append(r.deployments, appsv1.Deployment{})
			target = &r.deployments[len(r.deployments)-1]
		case "Job":
			r.jobs = append(r.jobs, batchv1.Job{})
			target = &r.jobs[len(r.jobs)-1]
		case "Service":
			r.services = append(r.services, corev1.Service{})
			target = &r.services[len(r.services)-1]
		case "ConfigMap":
			r.configMaps = append(r.configMaps, corev1.ConfigMap{})
			target = &r.configMaps[len(r.configMaps)-1]
		case "Secret":
			r.secrets = append(r.secrets, corev1.Secret{})
			target = &r.secrets[len(r.secrets)-1]
		case "PodDisruptionBudget":
			r.pdbs = append(r.pdbs, policyv1.PodDisruptionBudget{})
			target = &r.pdbs[len(r.pdbs)-1]
		default:
			continue
		}
		if err := yaml.UnmarshalStrict([]byte(doc), target); err != nil {
			t.Fatalf("%s does not match its Kubernetes type: %v", head.Kind, err)
		}
	}
	return r, nil
}

func merge(base map[string]any, over map[string]any) map[string]any {
	out := map[string]any{}
	for k, v := range base {
		out[k] = v
	}
	for k, v := range over {
		if m, ok := v.(map[string]any); ok {
			if b, ok := out[k].(map[string]any); ok {
				out[k] = merge(b, m)
				continue
			}
		}
		out[k] = v
	}
	return out
}

// TestLint runs Helm's linter (as "helm lint --strict" reports) on both
// value sets.
func TestLint(t *testing.T) {
	for name, vals := range map[string]map[string]any{"defaults": requiredValues, "production": productionValues(t)} {
		t.Run(name, func(t *testing.T) {
			l := lint.All(chartDir, vals, "platform", false)
			for _, m := range l.Messages {
				if m.Severity >= support.WarningSev {
					t.Errorf("lint: %s", m)
				}
			}
		})
	}
}

// TestRequiredValues: without the PostgreSQL and Redis URLs, the keys and
// the callers (and no existingSecret), the chart refuses to render and
// says what is missing.
func TestRequiredValues(t *testing.T) {
	for _, tt := range []struct {
		drop string
		want string
	}{
		{"database", "database.url is required"},
		{"redis", "redis.url is required"},
		{"masterKeys", "masterKeys is required"},
		{"callers", "callers is required"},
		{"publicURL", "publicURL is required"},
	} {
		vals := merge(requiredValues, nil)
		delete(vals, tt.drop)
		if _, err := render(t, vals); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("without %s: %v, want %q", tt.drop, err, tt.want)
		}
	}
	if _, err := render(t, merge(requiredValues, map[string]any{"database": map[string]any{"url": "mysql://x"}})); err == nil ||
		!strings.Contains(err.Error(), "must be a postgres:// URL") {
		t.Errorf("a non-PostgreSQL database: %v", err)
	}
}

func TestRenderedManifests(t *testing.T) {
	for name, vals := range map[string]map[string]any{"defaults": requiredValues, "production": productionValues(t)} {
		t.Run(name, func(t *testing.T) {
			r, err := render(t, vals)
			if err != nil {
				t.Fatalf("render: %v", err)
			}
			checkDeployment(t, r, name == "production")
			checkMigration(t, r)
			checkService(t, r)
			checkSecrets(t, r, name == "production")
			if len(r.pdbs) != 1 || r.pdbs[0].Spec.MaxUnavailable == nil || r.pdbs[0].Spec.MaxUnavailable.IntValue() != 1 {
				t.Errorf("PodDisruptionBudget: %+v", r.pdbs)
			}
		})
	}
}

func checkDeployment(t *testing.T, r *rendered, tls bool) {
	t.Helper()
	if len(r.deployments) != 1 {
		t.Fatalf("%d Deployments", len(r.deployments))
	}
	d := r.deployments[0]
	if d.Spec.Replicas == nil || *d.Spec.Replicas < 2 {
		t.Errorf("replicas %v, want at least 2", d.Spec.Replicas)
	}
	pod := d.Spec.Template.Spec
	if sc := pod.SecurityContext; sc == nil || sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot || sc.RunAsUser == nil || *sc.RunAsUser != 65532 {
		t.Errorf("pod securityContext %+v: want runAsNonRoot and user 65532", sc)
	}
	if len(pod.Containers) != 1 {
		t.Fatalf("%d containers", len(pod.Containers))
	}
	c := pod.Containers[0]
	if sc := c.SecurityContext; sc == nil || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem ||
		sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation || sc.Capabilities == nil || !slices.Contains(sc.Capabilities.Drop, "ALL") {
		t.Errorf("container securityContext %+v", sc)
	}
	scheme := corev1.URISchemeHTTP
	if tls {
		scheme = corev1.URISchemeHTTPS
	}
	for name, p := range map[string]*corev1.Probe{"startup": c.StartupProbe, "readiness": c.ReadinessProbe, "liveness": c.LivenessProbe} {
		if p == nil || p.HTTPGet == nil {
			t.Errorf("%s probe missing", name)
			continue
		}
		want := "/healthz"
		if name == "readiness" {
			want = "/readyz" // readiness follows PostgreSQL and Redis; liveness must not
		}
		if p.HTTPGet.Path != want || p.HTTPGet.Port.String() != "http" || p.HTTPGet.Scheme != scheme {
			t.Errorf("%s probe %+v, want %s %s on port http", name, p.HTTPGet, scheme, want)
		}
	}
	if c.Resources.Requests.Cpu().IsZero() || c.Resources.Requests.Memory().IsZero() || c.Resources.Limits.Memory().IsZero() {
		t.Errorf("resources %+v: want cpu and memory requests and a memory limit", c.Resources)
	}
	ports := map[string]int32{}
	for _, p := range c.Ports {
		ports[p.Name] = p.ContainerPort
	}
	if ports["grpc"] == 0 || ports["http"] == 0 || ports["metrics"] == 0 {
		t.Errorf("container ports %v: want grpc, http and metrics", ports)
	}
	if !slices.Equal(c.Args, []string{"serve"}) {
		t.Errorf("args %v", c.Args)
	}
	secretEnv := map[string]bool{}
	for _, e := range c.Env {
		if e.Value != "" {
			t.Errorf("env %s has an inline value; secrets come from the Secret", e.Name)
		}
		if e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil {
			secretEnv[e.Name] = true
		}
	}
	for _, n := range []string{"MCPAUTH_DATABASE_URL", "MCPAUTH_REDIS_URL", "MCPAUTH_MASTER_KEYS"} {
		if !secretEnv[n] {
			t.Errorf("%s does not come from a Secret", n)
		}
	}
	// The callers file is a directory mount, so Secret updates reach it
	// (a subPath mount would freeze it) and mcpauthd reloads it.
	for _, m := range c.VolumeMounts {
		if m.SubPath != "" {
			t.Errorf("volume mount %s uses subPath: Secret updates would not reach it", m.Name)
		}
	}
	cm := configMap(t, r)
	if cm.Data["MCPAUTH_CALLERS_FILE"] != "/etc/mcpauth/callers/callers.json" {
		t.Errorf("MCPAUTH_CALLERS_FILE = %q", cm.Data["MCPAUTH_CALLERS_FILE"])
	}
	mounted := false
	for _, m := range c.VolumeMounts {
		if m.MountPath == "/etc/mcpauth/callers" {
			mounted = true
		}
	}
	if !mounted {
		t.Error("the callers Secret is not mounted at /etc/mcpauth/callers")
	}
	if tls && (cm.Data["MCPAUTH_TLS_CLIENT_CA_FILE"] == "" || cm.Data["MCPAUTH_TLS_CERT_FILE"] == "") {
		t.Errorf("TLS settings missing from %v", cm.Data)
	}
}

func configMap(t *testing.T, r *rendered) corev1.ConfigMap {
	t.Helper()
	if len(r.configMaps) != 1 {
		t.Fatalf("%d ConfigMaps", len(r.configMaps))
	}
	return r.configMaps[0]
}

func checkMigration(t *testing.T, r *rendered) {
	t.Helper()
	if len(r.jobs) != 1 {
		t.Fatalf("%d Jobs, want the migration Job", len(r.jobs))
	}
	j := r.jobs[0]
	if hook := j.Annotations["helm.sh/hook"]; hook != "pre-install,pre-upgrade" {
		t.Errorf("migration hook %q", hook)
	}
	c := j.Spec.Template.Spec.Containers[0]
	if !slices.Equal(c.Args, []string{"migrate"}) || j.Spec.Template.Spec.RestartPolicy != corev1.RestartPolicyNever {
		t.Errorf("migration container args %v restart %s", c.Args, j.Spec.Template.Spec.RestartPolicy)
	}
	if sc := j.Spec.Template.Spec.SecurityContext; sc == nil || sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot {
		t.Error("migration pod may run as root")
	}
}

func checkService(t *testing.T, r *rendered) {
	t.Helper()
	if len(r.services) != 1 {
		t.Fatalf("%d Services", len(r.services))
	}
	var names []string
	for _, p := range r.services[0].Spec.Ports {
		names = append(names, fmt.Sprintf("%s:%d->%s", p.Name, p.Port, p.TargetPort.String()))
	}
	want := []string{"grpc:9090->grpc", "http:8080->http", "metrics:9091->metrics"}
	if !slices.Equal(names, want) {
		t.Errorf("service ports %v, want %v", names, want)
	}
}

// checkSecrets: secret values appear only in the Secret, never in a
// ConfigMap, an annotation or any other manifest; with existingSecret the
// chart makes no Secret at all.
func checkSecrets(t *testing.T, r *rendered, existing bool) {
	t.Helper()
	if existing {
		if len(r.secrets) != 0 {
			t.Errorf("existingSecret set, yet the chart renders %d Secrets", len(r.secrets))
		}
		if d := r.deployments[0].Spec.Template.Spec.Containers[0].Env[0].ValueFrom.SecretKeyRef.Name; d != "mcpauth-secrets" {
			t.Errorf("env reads Secret %q, want the existing one", d)
		}
		return
	}
	if len(r.secrets) != 1 {
		t.Fatalf("%d Secrets", len(r.secrets))
	}
	s := r.secrets[0]
	for _, k := range []string{"database-url", "redis-url", "master-keys", "callers.json"} {
		if len(s.Data[k]) == 0 {
			t.Errorf("Secret lacks %s", k)
		}
	}
	for _, cm := range r.configMaps {
		for k, v := range cm.Data {
			for _, sv := range secretValues {
				if strings.Contains(v, sv) {
					t.Errorf("ConfigMap key %s holds a secret value", k)
				}
			}
		}
	}
	// Outside the Secret (base64 there), no manifest names a secret value.
	for _, sv := range secretValues {
		if strings.Contains(r.raw, sv) {
			t.Errorf("a rendered manifest holds secret value %q in clear", sv)
		}
	}
}
