package repository

import (
	"context"
	"time"

	"gorm.io/gorm"
	"gorm.io/gorm/clause"
)

// KeyCheck is the key_checks row of one master key id. It is not tenant
// data: master keys are process-wide.
type KeyCheck struct {
	KeyID      uint32 `gorm:"primaryKey"`
	CheckValue string
	CreatedAt  time.Time
}

// TableName implements gorm's tabler.
func (KeyCheck) TableName() string { return "key_checks" }

// CheckKeys records the check value of every key id in checks that the
// database does not know yet, and returns, sorted, the ids whose recorded
// value differs from the one given: keys other than those the data was
// written with. It inserts before it compares, in one transaction, so of two
// processes starting at once with different keys under a new id one records
// its value and the other sees a mismatch.
func (s *Store) CheckKeys(ctx context.Context, checks map[uint32]string) (mismatched []uint32, err error) {
	err = s.transaction(ctx, func(tx *gorm.DB) error {
		mismatched = nil
		now := time.Now().UTC()
		for id, v := range checks {
			row := KeyCheck{KeyID: id, CheckValue: v, CreatedAt: now}
			if err := tx.Clauses(clause.OnConflict{DoNothing: true}).Create(&row).Error; err != nil {
				return err
			}
		}
		var rows []KeyCheck
		if err := tx.Order("key_id").Find(&rows).Error; err != nil {
			return err
		}
		for _, r := range rows {
			if v, ok := checks[r.KeyID]; ok && v != r.CheckValue {
				mismatched = append(mismatched, r.KeyID)
			}
		}
		return nil
	})
	return mismatched, dbErr(err, "check master keys")
}

// KeyChecks returns the recorded check value of every key id.
func (s *Store) KeyChecks(ctx context.Context) (map[uint32]string, error) {
	var rows []KeyCheck
	if err := s.db.WithContext(ctx).Find(&rows).Error; err != nil {
		return nil, dbErr(err, "read key checks")
	}
	out := make(map[uint32]string, len(rows))
	for _, r := range rows {
		out[r.KeyID] = r.CheckValue
	}
	return out, nil
}

// AnyProviderUnderKey returns one provider of any tenant whose row is
// encrypted under keyID, or nil when there is none. Cross-tenant: it serves
// the startup check that a key id first seen by key_checks (a database
// written before it existed) is the key the rows were written with.
func (s *Store) AnyProviderUnderKey(ctx context.Context, keyID uint32) (*Provider, error) {
	var out []Provider
	if err := s.db.WithContext(ctx).Where("key_id = ?", keyID).Limit(1).Find(&out).Error; err != nil {
		return nil, dbErr(err, "read a provider for the key check")
	}
	if len(out) == 0 {
		return nil, nil
	}
	return &out[0], nil
}
