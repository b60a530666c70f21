// Package webhook signs and posts webhook messages as the Standard Webhooks
// specification describes (https://www.standardwebhooks.com): headers
// webhook-id, webhook-timestamp and webhook-signature, the signature being
// "v1," and the base64 HMAC-SHA256 of "id.timestamp.body" under the
// endpoint's secret ("whsec_" and base64 key bytes). Signing uses the
// specification's own Go library.
package webhook

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"

	"github.com/mcpauth/mcpauth/secret"
)

// Message is one webhook message.
type Message struct {
	// ID is the message id, the same on every attempt (receivers use it to
	// drop repeats).
	ID string
	// Timestamp is the attempt's time (webhook-timestamp, Unix seconds).
	Timestamp time.Time
	// Body is the JSON payload.
	Body []byte
	// Secrets sign the message; more than one during a rotation's grace
	// period (one signature each, space-separated).
	Secrets []secret.Secret
}

// Sign returns the webhook-signature header value of m.
func Sign(m Message) (string, error) {
	sigs := make([]string, 0, len(m.Secrets))
	for _, s := range m.Secrets {
		wh, err := standardwebhooks.NewWebhook(s.Reveal())
		if err != nil {
			return "", errors.New("webhook: signing secret is not base64")
		}
		sig, err := wh.Sign(m.ID, m.Timestamp, m.Body)
		if err != nil {
			return "", errors.New("webhook: signing failed")
		}
		sigs = append(sigs, sig)
	}
	return strings.Join(sigs, " "), nil
}

// Sender posts messages with an HTTP client (the egress guard's, so that
// every delivery is checked at dial time).
type Sender struct {
	client    *http.Client
	timeout   time.Duration
	userAgent string
}

// NewSender returns a Sender posting with client, each attempt bounded by
// timeout (default 10 s).
func NewSender(client *http.Client, timeout time.Duration, userAgent string) (*Sender, error) {
	if client == nil {
		return nil, errors.New("webhook: client is required")
	}
	if timeout <= 0 {
		timeout = 10 * time.Second
	}
	return &Sender{client: client, timeout: timeout, userAgent: userAgent}, nil
}

// maxDrain bounds how much of a response is read (and discarded) so the
// connection can be reused.
const maxDrain = 64 << 10

// Send posts the message (id, ts, body) signed with secrets to url and
// returns the HTTP status. Any 2xx is success; another status is an error
// naming it. Errors never carry the response body or the URL's query.
func (s *Sender) Send(ctx context.Context, url, id string, ts time.Time, body []byte, secrets []secret.Secret) (int, error) {
	return s.SendMessage(ctx, url, Message{ID: id, Timestamp: ts, Body: body, Secrets: secrets})
}

// SendMessage is Send with the message as one value.
func (s *Sender) SendMessage(ctx context.Context, url string, m Message) (int, error) {
	sig, err := Sign(m)
	if err != nil {
		return 0, err
	}
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(m.Body))
	if err != nil {
		return 0, errors.New("webhook: invalid endpoint url")
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set(standardwebhooks.HeaderWebhookID, m.ID)
	req.Header.Set(standardwebhooks.HeaderWebhookTimestamp, strconv.FormatInt(m.Timestamp.Unix(), 10))
	req.Header.Set(standardwebhooks.HeaderWebhookSignature, sig)
	if s.userAgent != "" {
		req.Header.Set("User-Agent", s.userAgent)
	}
	resp, err := s.client.Do(req)
	if err != nil {
		return 0, fmt.Errorf("webhook: %w", scrub(err))
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxDrain))
	_ = resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return resp.StatusCode, fmt.Errorf("webhook: endpoint answered %d", resp.StatusCode)
	}
	return resp.StatusCode, nil
}

// scrub drops the URL a *url.Error quotes (it may hold a token in its
// query) and keeps its cause.
func scrub(err error) error {
	var ue interface{ Unwrap() error }
	if errors.As(err, &ue) {
		if inner := ue.Unwrap(); inner != nil && strings.Contains(err.Error(), "://") {
			return inner
		}
	}
	return err
}
