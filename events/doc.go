// Package events delivers Berth's events to webhooks.
//
// The events themselves are written by package db, in the transaction of
// the change they describe (a transactional outbox; see db/events.go),
// with a delivery row for every webhook that wants them. This package
// runs, in every replica, the workers that claim those rows and send them
// (Worker), and the buffer that turns pulls into events without a
// database write per pull (Pulls).
//
// Guarantees, as the README states them: every committed change is
// delivered at least once to every webhook that wanted it when it
// committed; within a repository a webhook receives events in seq order,
// each only after the previous one was delivered or dead-lettered; a
// delivery that keeps failing is retried with exponential backoff and
// jitter, and dead-lettered after MaxAttempts (redrive puts it back).
package events
