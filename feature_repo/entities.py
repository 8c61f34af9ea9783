"""Entities: a person, as resolved by identity resolution (join key `person_id`)."""

from feast import Entity, ValueType

person = Entity(
    name="person",
    join_keys=["person_id"],
    value_type=ValueType.STRING,
    description="A resolved person: one or more source records linked by identity resolution.",
)
